// Package envelope signs and verifies the COSE_Sign1 envelope (RFC 9052) a
// device wraps around its telemetry record (docs/protocol.md#3-the-message-cose_sign1-around-a-cbor-record).
//
// # Rules
//
// A message is a COSE_Sign1, tagged (CBOR tag 18) or untagged, with an
// attached payload and empty external AAD. Its protected header carries alg
// ES256 for a P-256 key or EdDSA for an Ed25519 key; any other alg, or none,
// fails as bad_signature. A kid, protected or unprotected, must equal the
// device ID. Every head (integer, length, tag) must have its shortest form
// (RFC 8949 section 4.2.1), or the message is malformed. Messages over
// [MaxMessage] bytes are refused before parsing.
//
// # Errors
//
// [Verifier.Verify] returns a [*verdict.Error]: TooLarge, Malformed (not a
// COSE_Sign1, detached payload, bad headers, a non-minimal head) or BadSignature (alg, kid or
// signature). Details are fixed phrases: no crypto internals.
//
// # Ed25519
//
// EdDSA signatures are checked with the cofactored equation and the ZIP-215
// rules of [batchverify] (docs/design.md#ed25519-signatures), alone or, for a
// Verifier made [WithBatcher], in a batch with other devices' messages: the
// verdict is the same either way.
package envelope

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/veraison/go-cose"

	"github.com/vitalgate/vitalgate/internal/batchverify"
	"github.com/vitalgate/vitalgate/internal/telemetry"
)

// HeaderAllowance is what a message may add to a [telemetry.MaxPayload]
// payload: COSE structure, headers (kid up to 64 bytes) and signature.
const HeaderAllowance = 1024

// MaxMessage is the size limit of a COSE message.
const MaxMessage = telemetry.MaxPayload + HeaderAllowance

// Flat details of BadSignature: callers may compare against them.
const (
	DetailAlg       = "alg not accepted for the device key"
	DetailKid       = "kid does not match the device"
	DetailSignature = "signature does not verify"
)

// Sign wraps payload in a tagged COSE_Sign1 signed by key: ES256 for a P-256
// ECDSA key, EdDSA for an Ed25519 key. A non-empty kid goes into the
// protected header.
func Sign(key crypto.Signer, kid string, payload []byte) ([]byte, error) {
	if payload == nil {
		payload = []byte{}
	}
	alg, err := algFor(key.Public())
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	signer, err := cose.NewSigner(alg, key)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	hdr := cose.Headers{Protected: cose.ProtectedHeader{cose.HeaderLabelAlgorithm: alg}}
	if kid != "" {
		hdr.Protected[cose.HeaderLabelKeyID] = []byte(kid)
	}
	msg, err := cose.Sign1(rand.Reader, signer, hdr, payload, nil)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return msg, nil
}

// algFor is the only algorithm accepted for a public key.
func algFor(pub crypto.PublicKey) (cose.Algorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return 0, errors.New("ECDSA key is not on P-256")
		}
		return cose.AlgorithmES256, nil
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return 0, errors.New("bad Ed25519 public key size")
		}
		return cose.AlgorithmEdDSA, nil
	}
	return 0, fmt.Errorf("unsupported key type %T: want P-256 ECDSA or Ed25519", pub)
}

// Verifier checks the messages of one device. Build it once per connection;
// it is safe for concurrent use.
type Verifier struct {
	alg  cose.Algorithm
	p256 *ecdsa.PublicKey // ES256: checked by verifyES256
	// EdDSA: the expanded key; nil when the certificate's key is not a
	// curve point, so that every signature fails.
	ed     *batchverify.Key
	batch  *batchverify.Batcher // EdDSA signatures are checked through it when set
	std    ed25519.PublicKey    // EdDSA signatures are checked with crypto/ed25519 when set
	kid    []byte
	anyKid bool // a key's messages (manifests) rather than a device's: a kid names nothing
}

// Option changes a Verifier as [NewVerifier] makes it.
type Option func(*Verifier)

// WithBatcher checks the EdDSA signatures through b, in batches with other
// Verifiers' messages (nil: each alone). It changes no verdict, and nothing
// for ES256.
func WithBatcher(b *batchverify.Batcher) Option {
	return func(v *Verifier) { v.batch = b }
}

// WithStdlibEd25519 checks the EdDSA signatures with Go's crypto/ed25519
// (cofactorless: it refuses some crafted signatures the gateway's rules
// accept) one at a time: the yardstick of the load harness's verify-only
// figure, not the gateway's rule. Nothing for ES256.
func WithStdlibEd25519() Option {
	return func(v *Verifier) {
		if v.ed != nil {
			v.std = v.ed.Public()
		}
	}
}

// NewVerifier returns a Verifier for the device whose certificate holds pub
// (a P-256 *ecdsa.PublicKey or an ed25519.PublicKey) and whose ID is
// deviceID. For an Ed25519 key it expands the key once (about 1.5 KiB).
func NewVerifier(pub crypto.PublicKey, deviceID string, opts ...Option) (*Verifier, error) {
	alg, err := algFor(pub)
	if err != nil {
		return nil, fmt.Errorf("new verifier: %w", err)
	}
	v := &Verifier{alg: alg, kid: []byte(deviceID)}
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		v.p256 = k
	case ed25519.PublicKey:
		v.ed, _ = batchverify.NewKey(k) // not a point: nil, and no signature verifies
	}
	for _, o := range opts {
		o(v)
	}
	return v, nil
}

// NewKeyVerifier returns a Verifier for messages signed by pub that name no
// device, such as firmware manifests: a kid, if present, is not checked. The
// other rules (alg, strict parsing, size) are those of [NewVerifier].
func NewKeyVerifier(pub crypto.PublicKey) (*Verifier, error) {
	v, err := NewVerifier(pub, "")
	if err != nil {
		return nil, err
	}
	v.anyKid = true
	return v, nil
}

// VerifyCert verifies msg with the key of cert, the device ID being the
// certificate's common name. It builds a Verifier per call: prefer
// [NewVerifier] once per connection.
func VerifyCert(cert *x509.Certificate, msg []byte) ([]byte, error) {
	v, err := NewVerifier(cert.PublicKey, cert.Subject.CommonName)
	if err != nil {
		return nil, err
	}
	return v.Verify(msg)
}
