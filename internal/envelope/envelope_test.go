package envelope_test

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/veraison/go-cose"

	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/envelope/testvectors"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

func verifier(t testing.TB, key string) *envelope.Verifier {
	t.Helper()
	v, err := envelope.NewVerifier(testvectors.PublicKey(key), testvectors.DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestVectors runs the envelope half of the shared table: envelope cases get
// their verdict, record cases come out with their payload intact.
func TestVectors(t *testing.T) {
	vs := map[string]*envelope.Verifier{testvectors.P256: verifier(t, testvectors.P256), testvectors.Ed25519: verifier(t, testvectors.Ed25519)}
	flat := map[string]bool{envelope.DetailAlg: true, envelope.DetailKid: true, envelope.DetailSignature: true}
	for _, c := range testvectors.Cases() {
		payload, err := vs[c.Key].Verify(c.Msg)
		if c.Stage == testvectors.StageRecord {
			if err != nil || !bytes.Equal(payload, c.Payload) {
				t.Errorf("%s: %v", c.Name, err)
			}
			continue
		}
		var ve *verdict.Error
		if !errors.As(err, &ve) || ve.Verdict != c.Verdict {
			t.Errorf("%s: %v, want %s", c.Name, err, c.Verdict)
			continue
		}
		if !strings.Contains(ve.Detail, c.Detail) {
			t.Errorf("%s: detail %q does not contain %q", c.Name, ve.Detail, c.Detail)
		}
		if ve.Verdict == verdict.BadSignature && !flat[ve.Detail] {
			t.Errorf("%s: detail %q is not one of the flat details", c.Name, ve.Detail)
		}
	}
}

// goCOSEVerify is the reference: go-cose's own parsing and verification.
func goCOSEVerify(msg []byte, pub crypto.PublicKey) ([]byte, error) {
	alg := cose.AlgorithmEdDSA
	if _, ok := pub.(*ecdsa.PublicKey); ok {
		alg = cose.AlgorithmES256
	}
	cv, err := cose.NewVerifier(alg, pub)
	if err != nil {
		return nil, err
	}
	var m cose.Sign1Message
	if len(msg) > 0 && msg[0] == 0xd2 {
		err = m.UnmarshalCBOR(msg)
	} else {
		err = (*cose.UntaggedSign1Message)(&m).UnmarshalCBOR(msg)
	}
	if err != nil {
		return nil, err
	}
	if err := m.Verify(nil, cv); err != nil {
		return nil, err
	}
	return m.Payload, nil
}

// TestAgreesWithGoCOSE: whatever the hand-written parser accepts, go-cose
// accepts with the same payload.
func TestAgreesWithGoCOSE(t *testing.T) {
	for _, c := range testvectors.Cases() {
		payload, err := verifier(t, c.Key).Verify(c.Msg)
		if err != nil {
			continue
		}
		ref, rerr := goCOSEVerify(c.Msg, testvectors.PublicKey(c.Key))
		if rerr != nil || !bytes.Equal(ref, payload) {
			t.Errorf("%s: accepted here, go-cose says %v", c.Name, rerr)
		}
	}
}

// TestVerifyRefusesNonMinimalHeads widens each head of valid messages in
// turn (tag, array, header maps and their labels and values, byte-string
// lengths), keeping its value: Verify refuses every one as malformed (go-cose
// accepts those inside the array).
func TestVerifyRefusesNonMinimalHeads(t *testing.T) {
	for _, c := range testvectors.Cases() {
		if c.Verdict != verdict.Accepted || len(c.Msg) > 1024 {
			continue
		}
		hs, err := testvectors.Heads(c.Msg)
		if err != nil {
			t.Fatalf("%s: %v", c.Name, err)
		}
		v := verifier(t, c.Key)
		for _, h := range hs {
			if !h.Minimal {
				t.Fatalf("%s: a valid vector with a non-minimal head at byte %d", c.Name, h.Off)
			}
			msg := testvectors.Widen(c.Msg, h.Off)
			_, err := v.Verify(msg)
			if verdict.Of(err) != verdict.Malformed || !strings.Contains(err.Error(), "non-minimal CBOR head") {
				t.Errorf("%s: head at byte %d (0x%02x) widened: %v", c.Name, h.Off, c.Msg[h.Off], err)
			}
		}
	}
}

func TestSignVerify(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for _, key := range []string{testvectors.P256, testvectors.Ed25519} {
		for _, kid := range []string{"", testvectors.DeviceID} {
			msg, err := envelope.Sign(testvectors.Signer(key), kid, []byte("payload"))
			if err != nil {
				t.Fatal(err)
			}
			if msg[0] != 0xd2 {
				t.Errorf("%s: not tagged", key)
			}
			got, err := verifier(t, key).Verify(msg)
			if err != nil || string(got) != "payload" {
				t.Errorf("%s kid %q: %v", key, kid, err)
			}
			if _, err := goCOSEVerify(msg, testvectors.PublicKey(key)); err != nil {
				t.Errorf("%s: go-cose refuses our message: %v", key, err)
			}
		}
		// empty payload is attached, not detached
		msg, err := envelope.Sign(testvectors.Signer(key), "", nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := verifier(t, key).Verify(msg); err != nil || len(got) != 0 {
			t.Errorf("%s empty payload: %v", key, err)
		}
	}
	if _, err := envelope.Sign(p384, "", []byte("x")); err == nil {
		t.Error("Sign accepted a P-384 key")
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := envelope.Sign(rsaKey, "", []byte("x")); err == nil {
		t.Error("Sign accepted an RSA key")
	}
}

func TestNewVerifierKeys(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	x, _ := ecdh.X25519().GenerateKey(rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	for _, pub := range []crypto.PublicKey{nil, &p384.PublicKey, x.PublicKey(), &rsaKey.PublicKey,
		ed25519.PublicKey(make([]byte, 31)), testvectors.Signer(testvectors.Ed25519)} {
		if _, err := envelope.NewVerifier(pub, "d"); err == nil {
			t.Errorf("NewVerifier accepted %T", pub)
		}
	}
}

func TestVerifyCert(t *testing.T) {
	key := testvectors.Signer(testvectors.Ed25519)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: testvectors.DeviceID},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := envelope.Sign(key, testvectors.DeviceID, []byte("x"))
	if _, err := envelope.VerifyCert(cert, msg); err != nil {
		t.Error(err)
	}
	msg, _ = envelope.Sign(key, "someone-else", []byte("x"))
	if _, err := envelope.VerifyCert(cert, msg); verdict.Of(err) != verdict.BadSignature {
		t.Errorf("kid of another device: %v", err)
	}
}

// TestConcurrentVerify shares one Verifier between goroutines (run with -race).
func TestConcurrentVerify(t *testing.T) {
	var cases []testvectors.Case
	for _, c := range testvectors.Cases() {
		if c.Key == testvectors.Ed25519 && len(c.Msg) < 8<<10 {
			cases = append(cases, c)
		}
	}
	v := verifier(t, testvectors.Ed25519)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 3 * len(cases) {
				c := cases[(i+g)%len(cases)]
				p, err := v.Verify(c.Msg)
				if (err == nil) != (c.Stage == testvectors.StageRecord) || (err == nil && !bytes.Equal(p, c.Payload)) {
					t.Errorf("%s: %v", c.Name, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// FuzzVerify: Verify never panics, fails only with its three verdicts,
// allocates a bounded amount, accepts nothing go-cose would refuse and no
// non-minimal head (by an independent walker).
func FuzzVerify(f *testing.F) {
	for _, c := range testvectors.Cases() {
		if len(c.Msg) <= envelope.MaxMessage {
			f.Add(c.Msg)
		}
	}
	keys := []string{testvectors.P256, testvectors.Ed25519}
	vs := []*envelope.Verifier{verifier(f, keys[0]), verifier(f, keys[1])}
	f.Fuzz(func(t *testing.T, msg []byte) {
		for i, v := range vs {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			payload, err := v.Verify(msg)
			runtime.ReadMemStats(&after)
			if d := after.TotalAlloc - before.TotalAlloc; d > 4<<20 {
				t.Fatalf("Verify of %d bytes allocated %d bytes", len(msg), d)
			}
			if err != nil {
				switch verdict.Of(err) {
				case verdict.Malformed, verdict.TooLarge, verdict.BadSignature:
				default:
					t.Fatalf("unexpected error %v", err)
				}
				continue
			}
			ref, rerr := goCOSEVerify(msg, testvectors.PublicKey(keys[i]))
			if rerr != nil || !bytes.Equal(ref, payload) {
				t.Fatalf("accepted, but go-cose says %v", rerr)
			}
			hs, herr := testvectors.Heads(msg)
			if herr != nil {
				t.Fatalf("accepted, but not well-formed: %v", herr)
			}
			for _, h := range hs {
				if !h.Minimal {
					t.Fatalf("accepted a non-minimal head at byte %d", h.Off)
				}
			}
		}
	})
}

// TestNewKeyVerifier: a key's verifier accepts any kid (a manifest names no device) and still refuses a message
// signed by another key; a device's verifier refuses the kid of another device.
func TestNewKeyVerifier(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	kv, err := envelope.NewKeyVerifier(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	dv, err := envelope.NewVerifier(key.Public(), "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	for _, kid := range []string{"", "dev-1", "vendor-key-7"} {
		msg, err := envelope.Sign(key, kid, []byte{0xa0})
		if err != nil {
			t.Fatal(err)
		}
		if p, err := kv.Verify(msg); err != nil || !bytes.Equal(p, []byte{0xa0}) {
			t.Errorf("kid %q: %x, %v", kid, p, err)
		}
		if _, err := dv.Verify(msg); (err == nil) != (kid != "vendor-key-7") {
			t.Errorf("device verifier, kid %q: %v", kid, err)
		}
	}
	forged, _ := envelope.Sign(other, "", []byte{0xa0})
	var ve *verdict.Error
	if _, err := kv.Verify(forged); !errors.As(err, &ve) || ve.Detail != envelope.DetailSignature {
		t.Errorf("another key: %v", err)
	}
	if _, err := envelope.NewKeyVerifier("not a key"); err == nil {
		t.Error("NewKeyVerifier accepted a string")
	}
}
