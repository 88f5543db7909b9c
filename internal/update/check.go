package update

import (
	"crypto"
	"crypto/sha256"
	"crypto/subtle"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// DeviceState is what a device knows about itself when it judges a manifest.
type DeviceState struct {
	Model        string
	InstalledSeq uint64    // seq of the installed manifest; 0 for the factory image
	Battery      int       // percent; -1 when unknown (the battery condition is then not checked)
	ID           string    // the device ID; "" skips the targets check (a check for a model, not a device)
	Now          time.Time // the zero time means time.Now()
}

// Check judges a verified manifest for device d, in this order: wrong_model, not_targeted, rollback, expired,
// battery. It returns nil or a [*Refusal].
func (m *Manifest) Check(d DeviceState) error {
	if subtle.ConstantTimeCompare([]byte(m.Model), []byte(d.Model)) != 1 {
		return refuse(ReasonWrongModel, "manifest for model %q, device is %q", m.Model, clip(d.Model, 64))
	}
	if d.ID != "" && len(m.Targets) > 0 && !m.Targeted(d.ID) {
		return refuse(ReasonNotTargeted, "device %q is not among the manifest's %d targets", clip(d.ID, 64), len(m.Targets))
	}
	if m.Seq <= d.InstalledSeq {
		return refuse(ReasonRollback, "seq %d is not above the installed seq %d", m.Seq, d.InstalledSeq)
	}
	now := d.Now
	if now.IsZero() {
		now = time.Now()
	}
	if now.UnixMilli() > m.NotAfter {
		return refuse(ReasonExpired, "expired at %s", m.Expiry().UTC().Format(time.RFC3339))
	}
	if d.Battery >= 0 && d.Battery < m.MinBattery {
		return refuse(ReasonBattery, "battery %d%%, the manifest needs %d%%", d.Battery, m.MinBattery)
	}
	return nil
}

// Targeted reports whether the manifest applies to device id: it names no targets, or names id.
func (m *Manifest) Targeted(id string) bool {
	if len(m.Targets) == 0 {
		return true
	}
	for _, t := range m.Targets {
		if t == id {
			return true
		}
	}
	return false
}

// CheckImage checks an image against its manifest: its size, then its SHA-256 digest ([*Refusal] "size" or
// "digest").
func CheckImage(m *Manifest, image []byte) error {
	if uint64(len(image)) != m.Size {
		return refuse(ReasonSize, "image of %d bytes, the manifest says %d", len(image), m.Size)
	}
	sum := sha256.Sum256(image)
	return CheckSum(m, uint64(len(image)), sum[:])
}

// CheckSum is [CheckImage] for an image hashed while it streamed: its size and SHA-256.
func CheckSum(m *Manifest, size uint64, sum []byte) error {
	if size != m.Size {
		return refuse(ReasonSize, "image of %d bytes, the manifest says %d", size, m.Size)
	}
	if subtle.ConstantTimeCompare(sum, m.Digest) != 1 {
		return refuse(ReasonDigest, "image SHA-256 differs from the manifest's digest")
	}
	return nil
}

// LoadPublicKey reads update-signing.pub (PKIX PEM): ECDSA P-256 or Ed25519.
func LoadPublicKey(path string) (crypto.PublicKey, error) { return pki.LoadPublicKey(path) }
