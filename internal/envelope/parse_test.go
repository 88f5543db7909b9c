package envelope

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"testing"

	"github.com/veraison/go-cose"
)

// FuzzParse: every message the hand-written parser accepts, go-cose parses
// too, to the same payload, signature, alg and kid; and the Sig_structure
// built here equals go-cose's.
func FuzzParse(f *testing.F) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	for _, kid := range []string{"", "dev-1"} {
		for _, p := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte{0xa1}, 300)} {
			msg, err := Sign(key, kid, p)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(msg)
			f.Add(msg[1:])
		}
	}
	f.Add([]byte{0x84, 0x40, 0xa1, 0x04, 0x41, 'k', 0x41, 'p', 0x41, 's'})
	f.Add([]byte{0xd2, 0x84, 0x43, 0xa1, 0x01, 0x27, 0xa1, 0x03, 0x61, 'x', 0x40, 0x41, 's'})
	f.Fuzz(func(t *testing.T, msg []byte) {
		var m sign1
		if err := parseSign1(msg, &m); err != nil {
			return
		}
		var ref cose.Sign1Message
		var err error
		if msg[0] == 0xd2 {
			err = ref.UnmarshalCBOR(msg)
		} else {
			err = (*cose.UntaggedSign1Message)(&ref).UnmarshalCBOR(msg)
		}
		if err != nil {
			t.Fatalf("parsed here, go-cose refuses: %v", err)
		}
		if !bytes.Equal(ref.Payload, m.payload) || !bytes.Equal(ref.Signature, m.signature) {
			t.Fatal("payload or signature differ")
		}
		if alg, err := ref.Headers.Protected.Algorithm(); (err == nil) != m.hasAlg || (err == nil && int64(alg) != m.alg) {
			t.Fatalf("alg: go-cose %v %v, here %v %v", alg, err, m.alg, m.hasAlg)
		}
		for i, h := range []map[any]any{ref.Headers.Protected, ref.Headers.Unprotected} {
			kid, _ := h[cose.HeaderLabelKeyID].([]byte)
			if !bytes.Equal(kid, m.kids[i]) || (kid == nil) != (m.kids[i] == nil) {
				t.Fatalf("kid %d: go-cose %x, here %x", i, kid, m.kids[i])
			}
		}
		// go-cose's Sig_structure, through its own verifier interface
		var got []byte
		_ = ref.Verify(nil, captureVerifier{alg: cose.Algorithm(m.alg), out: &got})
		if m.hasAlg && got != nil && !bytes.Equal(got, m.toBeSigned(nil)) {
			t.Fatalf("Sig_structure differs:\n%x\n%x", got, m.toBeSigned(nil))
		}
	})
}

type captureVerifier struct {
	alg cose.Algorithm
	out *[]byte
}

func (c captureVerifier) Algorithm() cose.Algorithm { return c.alg }
func (c captureVerifier) Verify(content, _ []byte) error {
	*c.out = append([]byte(nil), content...)
	return nil
}
