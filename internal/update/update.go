// Package update is a stand-in for the manifest package (the contract's API only), until that branch is merged.
package update

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"
)

type Manifest struct {
	V          int      `cbor:"v"`
	Vendor     string   `cbor:"vendor"`
	Model      string   `cbor:"model"`
	Version    string   `cbor:"version"`
	Seq        uint64   `cbor:"seq"`
	Digest     []byte   `cbor:"digest"`
	Size       uint64   `cbor:"size"`
	NotAfter   int64    `cbor:"not_after"`
	MinBattery *int     `cbor:"min_battery,omitempty"`
	Targets    []string `cbor:"targets,omitempty"`
}

type DeviceState struct {
	Model        string
	InstalledSeq uint64
	Battery      int
	ID           string
	Now          time.Time
}

type Refusal struct{ Reason, Detail string }

func (r *Refusal) Error() string { return r.Reason + ": " + r.Detail }

func alg(pub crypto.PublicKey) (cose.Algorithm, error) {
	switch pub.(type) {
	case *ecdsa.PublicKey:
		return cose.AlgorithmES256, nil
	case ed25519.PublicKey:
		return cose.AlgorithmEdDSA, nil
	}
	return 0, errors.New("unsupported key")
}

func Sign(key crypto.Signer, m *Manifest) ([]byte, error) {
	a, err := alg(key.Public())
	if err != nil {
		return nil, err
	}
	s, err := cose.NewSigner(a, key)
	if err != nil {
		return nil, err
	}
	em, _ := cbor.CoreDetEncOptions().EncMode()
	p, err := em.Marshal(m)
	if err != nil {
		return nil, err
	}
	return cose.Sign1(rand.Reader, s, cose.Headers{Protected: cose.ProtectedHeader{cose.HeaderLabelAlgorithm: a}}, p, nil)
}

func Parse(b []byte, pub crypto.PublicKey) (*Manifest, error) {
	var msg cose.Sign1Message
	if err := msg.UnmarshalCBOR(b); err != nil {
		return nil, &Refusal{"malformed", err.Error()}
	}
	a, err := alg(pub)
	if err != nil {
		return nil, err
	}
	v, err := cose.NewVerifier(a, pub)
	if err != nil {
		return nil, err
	}
	if err := msg.Verify(nil, v); err != nil {
		return nil, &Refusal{"forged", err.Error()}
	}
	var m Manifest
	if err := cbor.Unmarshal(msg.Payload, &m); err != nil {
		return nil, &Refusal{"malformed", err.Error()}
	}
	return &m, nil
}

func CheckImage(m *Manifest, image []byte) error {
	if uint64(len(image)) != m.Size {
		return &Refusal{"size", fmt.Sprintf("%d bytes, manifest says %d", len(image), m.Size)}
	}
	if d := sha256.Sum256(image); !bytes.Equal(d[:], m.Digest) {
		return &Refusal{"digest", "differs"}
	}
	return nil
}

func LoadPublicKey(path string) (crypto.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p, _ := pem.Decode(b)
	if p == nil {
		return nil, errors.New("no PEM")
	}
	return x509.ParsePKIXPublicKey(p.Bytes)
}
