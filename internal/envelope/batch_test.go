package envelope_test

import (
	"crypto/ed25519"
	"errors"
	"sync"
	"testing"

	"github.com/vitalgate/vitalgate/internal/batchverify"
	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/envelope/testvectors"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// TestVectorsBatched: every test vector gets the same verdict and detail
// from a Verifier with a batcher, all of them checked at once, as from one
// without.
func TestVectorsBatched(t *testing.T) {
	b := batchverify.New(0, 0)
	defer b.Close()
	plain := map[string]*envelope.Verifier{}
	batched := map[string]*envelope.Verifier{}
	for _, k := range []string{testvectors.P256, testvectors.Ed25519} {
		plain[k] = verifier(t, k)
		v, err := envelope.NewVerifier(testvectors.PublicKey(k), testvectors.DeviceID, envelope.WithBatcher(b))
		if err != nil {
			t.Fatal(err)
		}
		batched[k] = v
	}
	cases := testvectors.Cases()
	var wg sync.WaitGroup
	for range 4 {
		for _, c := range cases {
			wg.Go(func() {
				_, want := plain[c.Key].Verify(c.Msg)
				_, got := batched[c.Key].Verify(c.Msg)
				if (want == nil) != (got == nil) || want != nil && got.Error() != want.Error() {
					t.Errorf("%s: batched %v, alone %v", c.Name, got, want)
				}
			})
		}
	}
	wg.Wait()
	if st := b.Stats(); st.Batched+st.Alone+st.Inline == 0 {
		t.Errorf("no EdDSA signature went through the batcher: %+v", st)
	}
}

// TestEdDSAKeyNotAPoint: a certificate's Ed25519 key that is not a curve
// point still makes a Verifier, whose every message is bad_signature, with
// a batcher or without.
func TestEdDSAKeyNotAPoint(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(nil)
	msg, err := envelope.Sign(key, "dev-1", []byte{0xa0})
	if err != nil {
		t.Fatal(err)
	}
	notPoint := make(ed25519.PublicKey, ed25519.PublicKeySize)
	notPoint[0] = 2 // y = 2 is no point's
	b := batchverify.New(0, 1)
	defer b.Close()
	for _, opts := range [][]envelope.Option{nil, {envelope.WithBatcher(b)}} {
		v, err := envelope.NewVerifier(notPoint, "dev-1", opts...)
		if err != nil {
			t.Fatal(err)
		}
		var ve *verdict.Error
		if _, err := v.Verify(msg); !errors.As(err, &ve) || ve.Detail != envelope.DetailSignature {
			t.Errorf("%v", err)
		}
	}
}
