package envelope

import (
	"crypto/ed25519"
	"crypto/subtle"
	"errors"
	"sync"

	"github.com/vitalgate/vitalgate/internal/verdict"
)

var (
	errAlg = &verdict.Error{Verdict: verdict.BadSignature, Detail: DetailAlg}
	errKid = &verdict.Error{Verdict: verdict.BadSignature, Detail: DetailKid}
	errSig = &verdict.Error{Verdict: verdict.BadSignature, Detail: DetailSignature}
)

// tbsPool recycles Sig_structure buffers (one per verification).
var tbsPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// Verify checks msg and returns its payload (the record bytes, not yet
// decoded; a sub-slice of msg). Errors are [*verdict.Error]: TooLarge,
// Malformed or BadSignature, whose details are fixed phrases.
func (v *Verifier) Verify(msg []byte) ([]byte, error) {
	if len(msg) > MaxMessage {
		return nil, verdict.New(verdict.TooLarge, "message of %d bytes, limit %d", len(msg), MaxMessage)
	}
	var m sign1
	if err := parseSign1(msg, &m); err != nil {
		return nil, malformed(err)
	}
	if !m.hasAlg || m.alg != int64(v.alg) {
		return nil, errAlg
	}
	if !v.kidOK(m.kids[0]) || !v.kidOK(m.kids[1]) {
		return nil, errKid
	}
	bp := tbsPool.Get().(*[]byte)
	tbs := m.toBeSigned((*bp)[:0])
	var ok bool
	if v.p256 != nil {
		ok = verifyES256(v.p256, tbs, m.signature) == nil
	} else {
		ok = v.verifyEdDSA(tbs, m.signature)
	}
	if cap(tbs) <= MaxMessage+64 {
		*bp = tbs[:0]
		tbsPool.Put(bp)
	}
	if !ok {
		return nil, errSig
	}
	return m.payload, nil
}

// verifyEdDSA checks an Ed25519 signature of tbs: through the batcher when
// the Verifier has one, alone otherwise, with the same rules
// ([batchverify.Key.Verify]).
func (v *Verifier) verifyEdDSA(tbs, sig []byte) bool {
	switch {
	case v.std != nil:
		return ed25519.Verify(v.std, tbs, sig)
	case v.batch != nil:
		return v.batch.Verify(v.ed, tbs, sig)
	}
	return v.ed.Verify(tbs, sig)
}

// kidOK reports whether a kid (nil when absent) names this device.
func (v *Verifier) kidOK(kid []byte) bool {
	return kid == nil || v.anyKid || subtle.ConstantTimeCompare(kid, v.kid) == 1
}

func malformed(err error) error {
	switch {
	case errors.Is(err, errDetached), errors.Is(err, errEmptySig), errors.Is(err, errTrailing),
		errors.Is(err, errHeaderDup), errors.Is(err, errCrit), errors.Is(err, errKidType),
		errors.Is(err, errIndefinite), errors.Is(err, errTag), errors.Is(err, errNotSign1),
		errors.Is(err, errLabel), errors.Is(err, errNonMinimal):
		return verdict.New(verdict.Malformed, "%v", err)
	case errors.Is(err, errHeader):
		return verdict.New(verdict.Malformed, "invalid COSE header")
	}
	return verdict.New(verdict.Malformed, "not a COSE_Sign1 message: %v", err)
}
