// Package update is the firmware manifest of docs/updates.md#for-device-makers-the-manifest: a COSE_Sign1 by the
// vendor's update-signing key around a CBOR map that names one image (model, version, seq, SHA-256 digest, size)
// and the conditions under which a device may install it.
//
// # Checks
//
// [Parse] verifies the signature (through package envelope, with its strict COSE rules) and decodes the payload
// strictly; [Manifest.Check] judges a verified manifest against one device; [CheckImage] judges the image bytes.
// Every refusal is a [*Refusal] whose Reason is one of the Reason* constants, in the order a device applies them:
//
//  1. forged: the signature does not verify with update-signing.pub, or the alg does not match its key;
//  2. malformed: the payload is not exactly one manifest in deterministic CBOR (RFC 8949 section 4.2.1: shortest
//     heads, sorted keys), or a field is out of its range;
//  3. wrong_model, not_targeted, rollback (seq not above the installed one), expired, battery;
//  4. size, digest: the image.
package update

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"regexp"
	"time"
	"unicode/utf8"

	"github.com/fxamacker/cbor/v2"

	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// Limits of the manifest format.
const (
	// Version is the only manifest format version this package accepts.
	Version = 1
	// MaxTargets is the most device IDs one manifest may name.
	MaxTargets = 512
	// MaxText is the longest vendor, model or version, in bytes.
	MaxText = 64
	// DigestSize is the size of the image digest (SHA-256).
	DigestSize = 32
)

// Reasons of a [Refusal].
const (
	ReasonForged      = "forged"
	ReasonMalformed   = "malformed"
	ReasonWrongModel  = "wrong_model"
	ReasonNotTargeted = "not_targeted"
	ReasonRollback    = "rollback"
	ReasonExpired     = "expired"
	ReasonBattery     = "battery"
	ReasonSize        = "size"
	ReasonDigest      = "digest"
)

// Refusal is why a manifest or an image is refused. Detail is a fixed phrase or names manifest fields; it never
// carries key material.
type Refusal struct {
	Reason string
	Detail string
}

func (r *Refusal) Error() string {
	if r.Detail == "" {
		return "update refused: " + r.Reason
	}
	return "update refused: " + r.Reason + ": " + r.Detail
}

func refuse(reason, format string, args ...any) *Refusal {
	return &Refusal{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// ReasonOf returns the Reason of err when it is a [*Refusal], else "".
func ReasonOf(err error) string {
	var r *Refusal
	if errors.As(err, &r) {
		return r.Reason
	}
	return ""
}

// Manifest is one signed firmware image description. MinBattery 0 means no battery condition; Targets nil means
// every device of the model.
type Manifest struct {
	V          int
	Vendor     string
	Model      string
	Version    string // semver
	Seq        uint64 // increasing per model; a device accepts only a seq above its installed one
	Digest     []byte // SHA-256 of the image
	Size       uint64 // bytes of the image
	NotAfter   int64  // Unix ms; the manifest is expired after it
	MinBattery int    // 0..100
	Targets    []string
}

// wireManifest is the CBOR form: pointers tell a missing key from a zero value.
type wireManifest struct {
	V          *int      `cbor:"v"`
	Vendor     *string   `cbor:"vendor"`
	Model      *string   `cbor:"model"`
	Version    *string   `cbor:"version"`
	Seq        *uint64   `cbor:"seq"`
	Digest     *[]byte   `cbor:"digest"`
	Size       *uint64   `cbor:"size"`
	NotAfter   *int64    `cbor:"not_after"`
	MinBattery *int      `cbor:"min_battery,omitempty"`
	Targets    *[]string `cbor:"targets,omitempty"`
}

var (
	decMode cbor.DecMode
	encMode cbor.EncMode
)

func init() {
	var err error
	decMode, err = cbor.DecOptions{
		DupMapKey:           cbor.DupMapKeyEnforcedAPF,
		IndefLength:         cbor.IndefLengthForbidden,
		TagsMd:              cbor.TagsForbidden,
		ExtraReturnErrors:   cbor.ExtraDecErrorUnknownField,
		MaxNestedLevels:     4, // the decoder's floor; the format nests 2 deep (map, targets)
		MaxArrayElements:    MaxTargets,
		MaxMapPairs:         16,
		UTF8:                cbor.UTF8RejectInvalid,
		FieldNameMatching:   cbor.FieldNameMatchingCaseSensitive,
		FieldNameByteString: cbor.FieldNameByteStringForbidden,
	}.DecMode()
	if err != nil {
		panic(fmt.Sprintf("update: decode mode: %v", err))
	}
	encMode, err = cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(fmt.Sprintf("update: encode mode: %v", err))
	}
}

// Sign returns the tagged COSE_Sign1 of m signed by key (ES256 for a P-256 key, EdDSA for an Ed25519 key), no kid.
// A zero V is written as [Version]; m must pass the range checks of [Parse].
func Sign(key crypto.Signer, m *Manifest) ([]byte, error) {
	if m == nil {
		return nil, errors.New("sign manifest: nil manifest")
	}
	c := *m
	if c.V == 0 {
		c.V = Version
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("sign manifest: %w", err)
	}
	payload, err := encMode.Marshal(c.wire())
	if err != nil {
		return nil, fmt.Errorf("sign manifest: %w", err)
	}
	if len(payload) > envelope.MaxMessage-envelope.HeaderAllowance {
		return nil, fmt.Errorf("sign manifest: payload of %d bytes over the limit", len(payload))
	}
	return envelope.Sign(key, "", payload)
}

func (m *Manifest) wire() *wireManifest {
	w := &wireManifest{V: &m.V, Vendor: &m.Vendor, Model: &m.Model, Version: &m.Version, Seq: &m.Seq,
		Digest: &m.Digest, Size: &m.Size, NotAfter: &m.NotAfter}
	if m.MinBattery != 0 {
		w.MinBattery = &m.MinBattery
	}
	if len(m.Targets) > 0 {
		w.Targets = &m.Targets
	}
	return w
}

// Parse verifies msg with pub (update-signing.pub: P-256 or Ed25519) and decodes its manifest strictly. A bad
// signature, alg or COSE structure is a [*Refusal] "forged" (an over-long or unparseable message "malformed"); a
// payload that is not exactly one valid manifest is "malformed". A pub of another type is a plain error.
func Parse(msg []byte, pub crypto.PublicKey) (*Manifest, error) {
	v, err := envelope.NewKeyVerifier(pub)
	if err != nil {
		return nil, fmt.Errorf("parse manifest: %w", err)
	}
	payload, err := v.Verify(msg)
	if err != nil {
		var ve *verdict.Error
		if errors.As(err, &ve) && ve.Verdict == verdict.BadSignature {
			return nil, refuse(ReasonForged, "%s", ve.Detail)
		}
		return nil, refuse(ReasonMalformed, "COSE: %v", err)
	}
	return Decode(payload)
}

// Decode decodes a manifest payload strictly (no signature check: use [Parse]). Errors are [*Refusal] "malformed".
func Decode(payload []byte) (*Manifest, error) {
	if len(payload) == 0 || payload[0]>>5 != 5 {
		return nil, refuse(ReasonMalformed, "payload is not a CBOR map")
	}
	var w wireManifest
	if err := decMode.Unmarshal(payload, &w); err != nil {
		return nil, refuse(ReasonMalformed, "%s", clip(err.Error(), 160))
	}
	for _, k := range []struct {
		name string
		nil  bool
	}{{"v", w.V == nil}, {"vendor", w.Vendor == nil}, {"model", w.Model == nil}, {"version", w.Version == nil},
		{"seq", w.Seq == nil}, {"digest", w.Digest == nil}, {"size", w.Size == nil}, {"not_after", w.NotAfter == nil}} {
		if k.nil {
			return nil, refuse(ReasonMalformed, "missing key %q", k.name)
		}
	}
	// The deterministic encoding is the only one: shortest heads, sorted keys, no null for an optional key, no
	// empty targets array.
	again, err := encMode.Marshal(&w)
	if err != nil || !bytes.Equal(again, payload) {
		return nil, refuse(ReasonMalformed, "not in deterministic CBOR encoding (RFC 8949 section 4.2.1)")
	}
	m := &Manifest{V: *w.V, Vendor: *w.Vendor, Model: *w.Model, Version: *w.Version, Seq: *w.Seq,
		Digest: *w.Digest, Size: *w.Size, NotAfter: *w.NotAfter}
	if w.MinBattery != nil {
		m.MinBattery = *w.MinBattery
	}
	if w.Targets != nil {
		if len(*w.Targets) == 0 {
			return nil, refuse(ReasonMalformed, "targets is empty: leave it out for every device of the model")
		}
		m.Targets = *w.Targets
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return m, nil
}

var semverRE = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)` +
	`(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?` +
	`(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$`)

// ValidVersion reports whether s is a semantic version (semver 2.0.0, no "v" prefix) of at most [MaxText] bytes.
func ValidVersion(s string) bool { return len(s) <= MaxText && semverRE.MatchString(s) }

// ValidModel reports whether s can name a model: the syntax of a device ID, since it is a path element of the
// repository's targets.
func ValidModel(s string) bool { return pki.ValidDeviceID(s) }

// validate checks the ranges of every field: a [*Refusal] "malformed" naming the field.
func (m *Manifest) validate() error {
	switch {
	case m.V != Version:
		return refuse(ReasonMalformed, "v %d: want %d", m.V, Version)
	case m.Vendor == "" || len(m.Vendor) > MaxText || !utf8.ValidString(m.Vendor):
		return refuse(ReasonMalformed, "vendor: want 1 to %d bytes of text", MaxText)
	case !ValidModel(m.Model):
		return refuse(ReasonMalformed, "model %q: want [A-Za-z0-9._-]{1,64}", clip(m.Model, 64))
	case !ValidVersion(m.Version):
		return refuse(ReasonMalformed, "version %q: want a semantic version", clip(m.Version, 64))
	case m.Seq == 0:
		return refuse(ReasonMalformed, "seq 0: a manifest's seq starts at 1 (0 is the factory image)")
	case len(m.Digest) != DigestSize:
		return refuse(ReasonMalformed, "digest of %d bytes: want %d (SHA-256)", len(m.Digest), DigestSize)
	case m.Size == 0:
		return refuse(ReasonMalformed, "size 0")
	case m.NotAfter <= 0:
		return refuse(ReasonMalformed, "not_after %d: want Unix milliseconds", m.NotAfter)
	case m.MinBattery < 0 || m.MinBattery > 100:
		return refuse(ReasonMalformed, "min_battery %d: want 0..100", m.MinBattery)
	case len(m.Targets) > MaxTargets:
		return refuse(ReasonMalformed, "%d targets: at most %d", len(m.Targets), MaxTargets)
	}
	seen := make(map[string]bool, len(m.Targets))
	for _, id := range m.Targets {
		if !pki.ValidDeviceID(id) {
			return refuse(ReasonMalformed, "target %q is not a device ID", clip(id, 64))
		}
		if seen[id] {
			return refuse(ReasonMalformed, "target %q listed twice", id)
		}
		seen[id] = true
	}
	return nil
}

// Expiry is NotAfter as a time.
func (m *Manifest) Expiry() time.Time { return time.UnixMilli(m.NotAfter) }

// clip shortens s to at most n bytes for a log-safe detail.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
