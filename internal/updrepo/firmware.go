package updrepo

import (
	"crypto"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/vitalgate/vitalgate/internal/update"
)

// Custom is the custom field of an image target: what a client needs to find the newest image of a model
// without downloading manifests.
type Custom struct {
	Model   string `json:"model"`
	Version string `json:"version"`
	Seq     uint64 `json:"seq"`
}

// ImagePath is the target path of the image of model at version.
func ImagePath(model, version string) string { return model + "/" + version + "/image.bin" }

// ManifestPath is the target path of its manifest.
func ManifestPath(model, version string) string { return model + "/" + version + "/manifest.cose" }

// Firmware publishes image: it fills m's Digest and Size from image, signs m with signer (update-signing.key),
// and adds the image and the manifest as targets, re-signing targets, snapshot and timestamp. It refuses a model
// and version already published, and a seq not above every seq published for the model. It returns the manifest.
func Firmware(repo string, keys *Keys, signer crypto.Signer, m *update.Manifest, image []byte, now time.Time) ([]byte, error) {
	if err := checkKeys(repo, keys); err != nil {
		return nil, err
	}
	targets, err := new(metadata.Metadata[metadata.TargetsType]).FromFile(metaPath(repo, "targets.json"))
	if err != nil {
		return nil, fmt.Errorf("update repository: read targets: %w", err)
	}
	if err := checkNew(targets.Signed.Targets, m); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(image)
	c := *m
	c.Digest, c.Size = sum[:], uint64(len(image))
	cose, err := update.Sign(signer, &c)
	if err != nil {
		return nil, err
	}
	imgPath, manPath := ImagePath(c.Model, c.Version), ManifestPath(c.Model, c.Version)
	img, err := metadata.TargetFile().FromBytes(imgPath, image, "sha256")
	if err != nil {
		return nil, fmt.Errorf("update repository: %w", err)
	}
	custom, err := json.Marshal(Custom{Model: c.Model, Version: c.Version, Seq: c.Seq})
	if err != nil {
		return nil, fmt.Errorf("update repository: %w", err)
	}
	raw := json.RawMessage(custom)
	img.Custom = &raw
	man, err := metadata.TargetFile().FromBytes(manPath, cose, "sha256")
	if err != nil {
		return nil, fmt.Errorf("update repository: %w", err)
	}
	targets.Signed.Targets[imgPath] = img
	targets.Signed.Targets[manPath] = man
	targets.Signed.Version++
	targets.Signed.Expires = expiry(now, TargetsExpiry)
	if err := publish(repo, keys, targets, map[string][]byte{imgPath: image, manPath: cose}, now); err != nil {
		return nil, err
	}
	return cose, nil
}

// checkNew refuses m when its model and version are published, or its seq is not above a published seq of its
// model.
func checkNew(published map[string]*metadata.TargetFiles, m *update.Manifest) error {
	if !update.ValidModel(m.Model) || !update.ValidVersion(m.Version) {
		return fmt.Errorf("model %q, version %q: want [A-Za-z0-9._-]{1,64} and a semantic version", m.Model, m.Version)
	}
	if _, ok := published[ImagePath(m.Model, m.Version)]; ok {
		return fmt.Errorf("%s %s is already published (a version is published once)", m.Model, m.Version)
	}
	for path, tf := range published {
		if tf.Custom == nil {
			continue
		}
		var c Custom
		if err := json.Unmarshal(*tf.Custom, &c); err != nil {
			return fmt.Errorf("update repository: target %s: custom field: %w", path, err)
		}
		if c.Model == m.Model && c.Seq >= m.Seq {
			return fmt.Errorf("seq %d is not above seq %d of %s %s, published: devices would refuse it as a rollback",
				m.Seq, c.Seq, c.Model, c.Version)
		}
	}
	return nil
}
