package envelope

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/veraison/go-cose"
)

// TestVerifyES256AgreesWithCose checks verifyES256 against go-cose's
// verifier on valid signatures (r and s with and without the top bit set)
// and on broken ones: flipped bits, leading zero bytes, r or s zero, wrong
// lengths.
func TestVerifyES256AgreesWithCose(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cv, err := cose.NewVerifier(cose.AlgorithmES256, &key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, tbs, sig []byte, want bool) {
		t.Helper()
		got := verifyES256(&key.PublicKey, tbs, sig) == nil
		ref := cv.Verify(tbs, sig) == nil
		if got != ref || got != want {
			t.Errorf("%s: verifyES256 %v, go-cose %v, want %v (sig %x)", name, got, ref, want, sig)
		}
	}
	highR, highS := false, false
	for i := range 64 {
		tbs := []byte{byte(i), 'm', 's', 'g'}
		d := sha256.Sum256(tbs)
		r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
		if err != nil {
			t.Fatal(err)
		}
		sig := make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
		highR, highS = highR || sig[0] >= 0x80, highS || sig[32] >= 0x80
		check("valid", tbs, sig, true)
		bad := append([]byte(nil), sig...)
		bad[i%64] ^= 0x01
		check("flipped bit", tbs, bad, false)
		z := append([]byte(nil), sig...)
		z[0], z[32] = 0, 0
		check("leading zeros", tbs, z, false)
		check("other message", append(tbs, 'x'), sig, false)
	}
	if !highR || !highS {
		t.Log("no r or s with the top bit set in 64 signatures") // about 2^-64
	}
	sig := make([]byte, 64)
	sig[63] = 1
	check("r zero", []byte("m"), sig, false)
	sig[63], sig[31] = 0, 1
	check("s zero", []byte("m"), sig, false)
	check("all zero", []byte("m"), make([]byte, 64), false)
	check("short", []byte("m"), make([]byte, 63), false)
	check("long", []byte("m"), make([]byte, 65), false)
	check("empty", []byte("m"), nil, false)
}
