package batchverify

import (
	"crypto/ed25519"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/oasisprotocol/curve25519-voi/curve"
	"github.com/oasisprotocol/curve25519-voi/curve/scalar"
)

// item is one check: a key, a message and a signature, and the verdict
// expected of it.
type item struct {
	name string
	pub  ed25519.PublicKey
	key  *Key
	msg  []byte
	sig  []byte
	want bool
}

// signer is a test key.
type signer struct {
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
	key  *Key
}

func newSigner(t testing.TB, n int) *signer {
	t.Helper()
	seed := sha512.Sum512([]byte(fmt.Sprintf("batchverify test key %d", n)))
	priv := ed25519.NewKeyFromSeed(seed[:32])
	pub := priv.Public().(ed25519.PublicKey)
	k, err := NewKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return &signer{pub: pub, priv: priv, key: k}
}

func (s *signer) item(name string, msg []byte) item {
	return item{name: name, pub: s.pub, key: s.key, msg: msg, sig: ed25519.Sign(s.priv, msg), want: true}
}

// honestCases are valid signatures and the usual ways of breaking them:
// a flipped bit, the wrong key, a truncated or empty signature, S above the
// group order.
func honestCases(t testing.TB) []item {
	t.Helper()
	a, b := newSigner(t, 1), newSigner(t, 2)
	var out []item
	for i := range 4 {
		out = append(out, a.item(fmt.Sprintf("valid a %d", i), fmt.Appendf(nil, "record %d of a", i)))
		out = append(out, b.item(fmt.Sprintf("valid b %d", i), fmt.Appendf(nil, "record %d of b", i)))
	}
	bad := func(name string, it item, f func(*item)) {
		it.name, it.want = name, false
		it.sig = append([]byte(nil), it.sig...)
		f(&it)
		out = append(out, it)
	}
	v := a.item("", []byte("a record"))
	bad("flipped bit in R", v, func(it *item) { it.sig[3] ^= 0x10 })
	bad("flipped bit in S", v, func(it *item) { it.sig[40] ^= 0x01 })
	bad("other message", v, func(it *item) { it.msg = []byte("a record!") })
	bad("wrong key", v, func(it *item) { it.pub, it.key = b.pub, b.key })
	bad("truncated", v, func(it *item) { it.sig = it.sig[:63] })
	bad("empty", v, func(it *item) { it.sig = nil })
	bad("too long", v, func(it *item) { it.sig = append(it.sig, 0) })
	bad("S plus the group order", v, func(it *item) { addOrder(it.sig[32:]) })
	return out
}

// groupOrder is ℓ = 2^252 + 27742317777372353535851937790883648493, little endian.
var groupOrder = [32]byte{0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10}

// addOrder adds ℓ to the little-endian scalar s in place (s + ℓ < 2^256 for
// any reduced s).
func addOrder(s []byte) {
	carry := 0
	for i := range 32 {
		v := int(s[i]) + int(groupOrder[i]) + carry
		s[i], carry = byte(v), v>>8
	}
}

// orderEight is the encoding of a point of order 8.
const orderEight = "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"

// nonCanonicalIdentity encodes the identity (y = 1) as y = 1 + p.
const nonCanonicalIdentity = "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// craftedCases are signatures no honest signer makes, on which the
// cofactored rules and Go's crypto/ed25519 differ, and stdlib is that
// library's verdict.
func craftedCases(t testing.TB) (items []item, stdlib []bool) {
	t.Helper()
	s := newSigner(t, 3)
	msg := []byte("a record with a mixed-order R")
	items = append(items, item{name: "R with an order-8 component", pub: s.pub, key: s.key, msg: msg,
		sig: mixedOrderR(t, s, msg), want: true})

	small := ed25519.PublicKey(mustHex(orderEight))
	sk, err := NewKey(small)
	if err != nil {
		t.Fatal(err)
	}
	// With A and R of small order and S = 0, [8](SB - R - kA) = 0 for any
	// message: the cofactored equation holds.
	zeroS := make([]byte, 32)
	items = append(items,
		item{name: "small-order A and R, S = 0", pub: small, key: sk, msg: []byte("anything"),
			sig: append(mustHex(orderEight), zeroS...), want: true},
		item{name: "non-canonical R (identity as y = 1 + p), small-order A, S = 0", pub: small, key: sk,
			msg: []byte("anything"), sig: append(mustHex(nonCanonicalIdentity), zeroS...), want: true})
	for _, it := range items {
		stdlib = append(stdlib, ed25519.Verify(it.pub, it.msg, it.sig))
	}
	return items, stdlib
}

// mixedOrderR signs msg with R = [r]B + T, T of order 8, and S = r + kA
// for k = H(R || A || msg): valid under the cofactored equation, refused by
// the cofactorless one.
func mixedOrderR(t testing.TB, s *signer, msg []byte) []byte {
	t.Helper()
	h := sha512.Sum512(s.priv.Seed())
	h[0] &= 248
	h[31] &= 127
	h[31] |= 64
	a, _ := scalar.NewFromBytesModOrder(h[:32])
	rw := sha512.Sum512([]byte("nonce"))
	r, _ := scalar.NewFromBytesModOrderWide(rw[:])
	var cT curve.CompressedEdwardsY
	var T, R curve.EdwardsPoint
	if _, err := cT.SetBytes(mustHex(orderEight)); err != nil {
		t.Fatal(err)
	}
	if _, err := T.SetCompressedY(&cT); err != nil {
		t.Fatal(err)
	}
	R.Mul(curve.ED25519_BASEPOINT_POINT, r)
	R.Add(&R, &T)
	var cR curve.CompressedEdwardsY
	cR.SetEdwardsPoint(&R)
	kh := sha512.New()
	kh.Write(cR[:])
	kh.Write(s.pub)
	kh.Write(msg)
	k, _ := scalar.NewFromBytesModOrderWide(kh.Sum(nil))
	var S scalar.Scalar
	S.Mul(k, a)
	S.Add(&S, r)
	sig := append([]byte(nil), cR[:]...)
	sb := make([]byte, 32)
	if err := S.ToBytes(sb); err != nil {
		t.Fatal(err)
	}
	return append(sig, sb...)
}

// inOneBatch submits items together so that the worker verifies them as one
// batch (at most MaxBatch of them), and returns the verdicts and the
// batcher's counts.
func inOneBatch(t *testing.T, items []item) ([]bool, Stats) {
	t.Helper()
	if len(items) > MaxBatch {
		t.Fatalf("%d items do not fit one batch", len(items))
	}
	entered, gate := make(chan struct{}), make(chan struct{})
	first := true
	b := newBatcher(len(items)+1, 1, func() {
		if first { // only the worker calls hold
			first = false
			close(entered)
			<-gate
		}
	})
	defer b.Close()
	plug := newSigner(t, 9).item("plug", []byte("plug"))
	go b.Verify(plug.key, plug.msg, plug.sig) // the worker takes it alone, then waits at the gate
	<-entered
	queued := 0
	for _, it := range items {
		if it.key != nil && len(it.sig) == 64 {
			queued++
		}
	}
	got := make([]bool, len(items))
	var wg sync.WaitGroup
	for i, it := range items {
		wg.Go(func() { got[i] = b.Verify(it.key, it.msg, it.sig) })
	}
	waitFor(t, func() bool { return len(b.queue) == queued })
	close(gate)
	wg.Wait()
	return got, b.Stats()
}

// waitFor polls cond until it holds (a test deadline otherwise).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 30s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestSingleMatchesStdlibOnHonestCases(t *testing.T) {
	for _, it := range honestCases(t) {
		std := ed25519.Verify(it.pub, it.msg, it.sig)
		if got := it.key.Verify(it.msg, it.sig); got != it.want || std != it.want {
			t.Errorf("%s: single %v, crypto/ed25519 %v, want %v", it.name, got, std, it.want)
		}
	}
}

func TestBatchMatchesSingle(t *testing.T) {
	items := honestCases(t)
	got, st := inOneBatch(t, items)
	for i, it := range items {
		if single := it.key.Verify(it.msg, it.sig); got[i] != single || got[i] != it.want {
			t.Errorf("%s: batched %v, single %v, want %v", it.name, got[i], single, it.want)
		}
	}
	if st.Batches != 1 || st.Failed != 1 {
		t.Errorf("stats %+v: want one failed batch", st)
	}
}

// TestOneBadEntryFoundExactly: a full batch of valid signatures with one
// bad one in the middle refuses exactly that one.
func TestOneBadEntryFoundExactly(t *testing.T) {
	var items []item
	for i := range MaxBatch {
		s := newSigner(t, 100+i%8)
		it := s.item(fmt.Sprint(i), fmt.Appendf(nil, "record %d", i))
		if i == 37 {
			it.sig[50] ^= 4
			it.want = false
		}
		items = append(items, it)
	}
	got, st := inOneBatch(t, items)
	for i, it := range items {
		if got[i] != it.want {
			t.Errorf("entry %d: %v, want %v", i, got[i], it.want)
		}
	}
	if st.Batches != 1 || st.Batched != MaxBatch || st.Failed != 1 {
		t.Errorf("stats %+v: want one failed batch of %d", st, MaxBatch)
	}
	got, st = inOneBatch(t, items[:37])
	for i := range got {
		if !got[i] {
			t.Errorf("valid entry %d refused", i)
		}
	}
	if st.Batches != 1 || st.Failed != 0 {
		t.Errorf("stats %+v: want one batch that passed", st)
	}
}

// TestCraftedCasesAgree: on small-order and non-canonical components the
// batch and single verdicts agree (both cofactored, ZIP-215), also inside a
// batch of valid signatures, which then passes as a whole; Go's
// crypto/ed25519 (cofactorless) refuses all three.
func TestCraftedCasesAgree(t *testing.T) {
	crafted, stdlib := craftedCases(t)
	items := append(honestCases(t)[:8], crafted...)
	got, st := inOneBatch(t, items)
	for i, it := range items {
		if single := it.key.Verify(it.msg, it.sig); got[i] != single || single != it.want {
			t.Errorf("%s: batched %v, single %v, want %v", it.name, got[i], single, it.want)
		}
	}
	if st.Batches != 1 || st.Failed != 0 {
		t.Errorf("stats %+v: the batch of valid and crafted signatures should pass whole", st)
	}
	for i, it := range crafted {
		t.Logf("%s: cofactored %v, crypto/ed25519 %v", it.name, it.want, stdlib[i])
	}
	for i, ok := range stdlib {
		if ok {
			t.Errorf("%s: crypto/ed25519 accepted it", crafted[i].name)
		}
	}
}

func TestNewKeyRefusesNonPoints(t *testing.T) {
	if _, err := NewKey(make([]byte, 31)); err == nil {
		t.Error("31-byte key accepted")
	}
	// y = 2 is not the y of a curve point.
	notPoint := make([]byte, 32)
	notPoint[0] = 2
	if _, err := NewKey(notPoint); err == nil {
		t.Error("a y that is no point's accepted")
	}
	var k *Key
	if k.Verify([]byte("m"), make([]byte, 64)) {
		t.Error("nil key verified a signature")
	}
}

// TestConcurrent: many goroutines at once, each verdict right.
func TestConcurrent(t *testing.T) {
	items := honestCases(t)
	crafted, _ := craftedCases(t)
	items = append(items, crafted...)
	b := New(64, 0)
	defer b.Close()
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for i := range 20 {
				it := items[(g*7+i)%len(items)]
				if got := b.Verify(it.key, it.msg, it.sig); got != it.want {
					t.Errorf("%s: %v, want %v", it.name, got, it.want)
				}
			}
		})
	}
	wg.Wait()
	st := b.Stats()
	if n := st.Batched + st.Alone + st.Inline; n != 32*20 {
		t.Errorf("stats %+v count %d requests, want %d", st, n, 32*20)
	}
}

// TestQueueFullVerifiesInline: with the worker busy and the queue full, a
// request is verified by its caller, at once and right.
func TestQueueFullVerifiesInline(t *testing.T) {
	entered, gate := make(chan struct{}), make(chan struct{})
	first := true
	b := newBatcher(1, 1, func() {
		if first {
			first = false
			close(entered)
			<-gate
		}
	})
	defer b.Close()
	s := newSigner(t, 5)
	v := s.item("valid", []byte("m"))
	go b.Verify(v.key, v.msg, v.sig) // taken by the worker, held
	<-entered
	queued := make(chan bool)
	go func() { queued <- b.Verify(v.key, v.msg, v.sig) }() // fills the queue
	waitFor(t, func() bool { return len(b.queue) == 1 })
	bad := append([]byte(nil), v.sig...)
	bad[0] ^= 1
	if !b.Verify(v.key, v.msg, v.sig) || b.Verify(v.key, v.msg, bad) {
		t.Error("wrong verdict inline")
	}
	if st := b.Stats(); st.Inline != 2 {
		t.Errorf("stats %+v: want 2 inline", st)
	}
	close(gate)
	if !<-queued {
		t.Error("queued request refused")
	}
}

// TestClose: requests queued at Close are answered, later ones verified by
// their callers, and Close may be repeated.
func TestClose(t *testing.T) {
	entered, gate := make(chan struct{}), make(chan struct{})
	first := true
	b := newBatcher(16, 1, func() {
		if first {
			first = false
			close(entered)
			<-gate
		}
	})
	items := honestCases(t)[:10]
	go b.Verify(items[0].key, items[0].msg, items[0].sig)
	<-entered
	got := make([]bool, len(items))
	var wg sync.WaitGroup
	for i, it := range items {
		wg.Go(func() { got[i] = b.Verify(it.key, it.msg, it.sig) })
	}
	waitFor(t, func() bool { return len(b.queue) == len(items) })
	closed := make(chan struct{})
	go func() { b.Close(); close(closed) }()
	close(gate)
	wg.Wait()
	<-closed
	for i, it := range items {
		if got[i] != it.want {
			t.Errorf("%s: %v, want %v", it.name, got[i], it.want)
		}
	}
	before := b.Stats().Inline
	if !b.Verify(items[1].key, items[1].msg, items[1].sig) {
		t.Error("valid signature refused after Close")
	}
	if b.Stats().Inline != before+1 {
		t.Error("request after Close not verified inline")
	}
	b.Close()
}
