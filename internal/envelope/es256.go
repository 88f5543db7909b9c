package envelope

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
)

var errES256Sig = errors.New("ES256 signature check failed")

// verifyES256 checks a COSE ES256 signature (r || s, 32 bytes each, RFC
// 9053) over tbs with pub, as go-cose's verifier does (SHA-256, then
// [ecdsa.Verify], which refuses r or s of zero and re-encodes both as ASN.1
// for [ecdsa.VerifyASN1]), without its two big.Int conversions and their
// encoding: the DER form is written into a buffer on the stack.
func verifyES256(pub *ecdsa.PublicKey, tbs, sig []byte) error {
	if len(sig) != 64 {
		return errES256Sig
	}
	digest := sha256.Sum256(tbs)
	var der [6 + 2*33]byte
	n := 2 // SEQUENCE tag and length, filled in last
	for _, v := range [][]byte{sig[:32], sig[32:]} {
		for len(v) > 0 && v[0] == 0 {
			v = v[1:] // minimal: no leading zero bytes
		}
		if len(v) == 0 {
			return errES256Sig // r or s is zero
		}
		der[n] = 0x02       // INTEGER
		pad := v[0] >= 0x80 // a positive number whose top bit is set gets a zero byte in front
		l := len(v)
		if pad {
			l++
		}
		der[n+1] = byte(l)
		n += 2
		if pad {
			der[n] = 0
			n++
		}
		n += copy(der[n:], v)
	}
	der[0], der[1] = 0x30, byte(n-2)
	if !ecdsa.VerifyASN1(pub, digest[:], der[:n]) {
		return errES256Sig
	}
	return nil
}
