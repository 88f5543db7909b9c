// Package testvectors is the one shared table of device messages (COSE_Sign1
// around a telemetry record) and the verdict each must get. It feeds the
// table tests of internal/telemetry and internal/envelope, seeds their fuzz
// targets, and is what documentation prints as byte-exact examples.
//
// # Determinism
//
// Keys come from fixed seeds ([Signer]) and records from fixed values, so
// [Generate] rebuilds every message byte for byte, except ECDSA signatures,
// which Go randomizes. The messages of those cases (Case.Randomized) are
// checked in as vectors.json; [Cases] is [Generate] with them swapped in, so
// its output is byte-exact and stable. After changing a case, run
//
//	go test ./internal/envelope/testvectors -run TestVectorsGolden -update
package testvectors

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// DeviceID is the identity (certificate CN) of the test device.
const DeviceID = "dev-00001"

// Key names of [Case.Key].
const (
	P256    = "p256"
	Ed25519 = "ed25519"
)

// Stages of [Case.Stage].
const (
	StageEnvelope = "envelope"
	StageRecord   = "record"
)

// Now is the gateway clock of the vectors: 2026-01-01T00:00:00Z.
var Now = time.UnixMilli(1767225600000).UTC()

// MaxAge is the stale limit the vectors are judged with.
const MaxAge = telemetry.DefaultMaxAge

// Case is one device message and the verdict it must get.
type Case struct {
	Name string `json:"name"`
	// Key is the device key the message is checked against: P256 or Ed25519.
	Key string `json:"key"`
	// Msg is the message as the device publishes it.
	Msg []byte `json:"-"`
	// Payload is the record inside Msg, nil when there is none to decode.
	Payload []byte `json:"-"`
	// Verdict is the outcome of [Check].
	Verdict verdict.Verdict `json:"verdict"`
	// Detail is a substring of the rejection's detail ("" = not checked).
	Detail string `json:"detail,omitempty"`
	// Stage is where the verdict is decided: StageEnvelope (the COSE
	// message) or StageRecord (the payload, which Verify returns intact).
	Stage string `json:"stage"`
	// Randomized marks an ECDSA signature: regenerating changes Msg.
	Randomized bool `json:"randomized,omitempty"`

	MsgHex     string `json:"msg"`
	PayloadHex string `json:"payload,omitempty"`
}

var keys = sync.OnceValue(func() map[string]crypto.Signer {
	seed := func(s string) []byte { h := sha256.Sum256([]byte("vitalgate test vectors: " + s)); return h[:] }
	p, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), seed("p256"))
	if err != nil {
		panic(err)
	}
	other, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), seed("other p256"))
	if err != nil {
		panic(err)
	}
	return map[string]crypto.Signer{
		P256:            p,
		Ed25519:         ed25519.NewKeyFromSeed(seed("ed25519")),
		"other-p256":    other,
		"other-ed25519": ed25519.NewKeyFromSeed(seed("other ed25519")),
	}
})

// Signer returns the fixed test key P256 or Ed25519.
func Signer(name string) crypto.Signer { return keys()[name] }

// PublicKey returns the public half of [Signer](name).
func PublicKey(name string) crypto.PublicKey { return Signer(name).Public() }

//go:embed vectors.json
var golden []byte

var cases = sync.OnceValues(func() ([]Case, error) {
	fresh, err := Generate()
	if err != nil {
		return nil, err
	}
	var gold []Case
	if err := json.Unmarshal(golden, &gold); err != nil {
		return nil, fmt.Errorf("vectors.json: %w", err)
	}
	byName := make(map[string]Case, len(gold))
	for _, c := range gold {
		byName[c.Name] = c
	}
	for i, c := range fresh {
		if !c.Randomized {
			continue
		}
		g, ok := byName[c.Name]
		if !ok {
			return nil, fmt.Errorf("vectors.json lacks %s: run TestVectorsGolden -update", c.Name)
		}
		msg, err := hex.DecodeString(g.MsgHex)
		if err != nil {
			return nil, fmt.Errorf("vectors.json: %s: %w", c.Name, err)
		}
		if c.Payload != nil && !bytes.Contains(msg, c.Payload) {
			return nil, fmt.Errorf("vectors.json: %s: stale payload: run TestVectorsGolden -update", c.Name)
		}
		fresh[i].Msg = msg
	}
	return fresh, nil
})

// Cases returns the table with stable bytes: [Generate] with the checked-in
// ECDSA messages (a fresh copy; the byte slices are shared, do not modify).
func Cases() []Case {
	cs, err := cases()
	if err != nil {
		panic(fmt.Sprintf("testvectors: %v", err))
	}
	out := make([]Case, len(cs))
	copy(out, cs)
	return out
}

// Marshal renders cases as JSON with hex bytes. TestVectorsGolden writes
// the Randomized ones to vectors.json.
func Marshal(cs []Case) ([]byte, error) {
	out := make([]Case, len(cs))
	for i, c := range cs {
		c.MsgHex = hex.EncodeToString(c.Msg)
		c.PayloadHex = hex.EncodeToString(c.Payload)
		out[i] = c
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Check runs the whole record check of the gateway on c.Msg that needs no
// device history, in pipeline order: envelope, then [CheckRecord]. It
// returns nil or the first rejection.
func Check(c Case) error {
	v, err := envelope.NewVerifier(PublicKey(c.Key), DeviceID)
	if err != nil {
		return err
	}
	payload, err := v.Verify(c.Msg)
	if err != nil {
		return err
	}
	return CheckRecord(payload)
}

// CheckRecord runs the record half of [Check] on payload: the gateway's
// own [telemetry.CheckRecord] (decode, identity, time, schema; replay and
// rate need a device's history and are not judged), with [DeviceID], [Now],
// [MaxAge] and the default schemas.
func CheckRecord(payload []byte) error {
	_, err := telemetry.CheckRecord(payload, &telemetry.RecordCheck{
		Dev: DeviceID, Now: Now, MaxAge: MaxAge, Schemas: telemetry.DefaultSchemas(),
	}, nil)
	return err
}

// signature signs tbs as COSE wants it: r||s for ECDSA P-256.
func signature(key crypto.Signer, tbs []byte) []byte {
	switch k := key.(type) {
	case ed25519.PrivateKey:
		return ed25519.Sign(k, tbs)
	case *ecdsa.PrivateKey:
		h := sha256.Sum256(tbs)
		r, s, err := ecdsa.Sign(rand.Reader, k, h[:])
		if err != nil {
			panic(err)
		}
		out := make([]byte, 64)
		r.FillBytes(out[:32])
		s.FillBytes(out[32:])
		return out
	}
	panic("testvectors: unknown key type")
}

// sign1 describes a hand-built COSE_Sign1.
type sign1 struct {
	key         crypto.Signer
	untagged    bool
	protected   []byte // serialized header map, or empty
	unprotected []byte // serialized header map; nil = empty map
	payload     []byte
	detached    bool
}

func (s sign1) build() []byte {
	tbs := cat([]byte{0x84}, cText("Signature1"), cBytes(s.protected), cBytes(nil), cBytes(s.payload))
	sig := signature(s.key, tbs)
	unprot := s.unprotected
	if unprot == nil {
		unprot = []byte{0xa0}
	}
	var out []byte
	if !s.untagged {
		out = append(out, 0xd2)
	}
	out = append(out, 0x84)
	out = append(out, cBytes(s.protected)...)
	out = append(out, unprot...)
	if s.detached {
		out = append(out, 0xf6)
	} else {
		out = append(out, cBytes(s.payload)...)
	}
	return append(out, cBytes(sig)...)
}

// alg header values.
const (
	algES256 = -7
	algEdDSA = -8
	algES512 = -36
	algPS256 = -37
)

func protAlg(alg int64) []byte { return rmap{{cUint(1), cInt(alg)}}.bytes() }

func protAlgKid(alg int64, kid string) []byte {
	return rmap{{cUint(1), cInt(alg)}, {cUint(4), cBytes([]byte(kid))}}.bytes()
}

func algOf(key string) int64 {
	if key == P256 || key == "other-p256" {
		return algES256
	}
	return algEdDSA
}
