// Package batchverify checks Ed25519 signatures from many goroutines at once:
// an opportunistic batcher. Callers submit (key, message, signature) and
// wait; a worker takes whatever is pending, up to [MaxBatch], and verifies it
// as one batch. A request that finds nothing else pending is verified alone,
// so there is no timer and no added wait at low load.
//
// # Rules
//
// Batch verification of Ed25519 is cofactored: it checks
// [8](sB - R - kA) = 0. So does the single check here ([Key.Verify]), with
// the ZIP-215 rules (curve25519-voi's VerifyOptionsZIP_215): S must be below
// the group order, R and A must decode to curve points, and non-canonical
// encodings and small-order components of R and A are accepted. A
// signature's verdict therefore never depends on whether it was batched.
//
// These rules differ from RFC 8032's cofactorless check, which Go's
// crypto/ed25519 implements ([S]B = R + [k]A, and R compared as encoded
// bytes), only for signatures whose R or public key has a small-order
// component, or whose R is non-canonically encoded: an honest signer never
// produces one (its R = [r]B and A = [a]B lie in the prime-order subgroup,
// canonically encoded). Every signature Go's crypto/ed25519 accepts is
// accepted here; some crafted ones it refuses are accepted here.
//
// # Bounds
//
// The queue holds at most the capacity given to [New]; a request that finds
// it full (or the batcher closed) is verified by its caller, so memory is
// bounded and no request is lost. When a batch fails, each of its entries is
// checked alone (curve25519-voi reports per entry), so exactly the bad ones
// are refused; a batch with a bad entry therefore costs its batch check on
// top of the single checks.
package batchverify

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// MaxBatch is the largest batch the worker verifies at once.
const MaxBatch = 64

// DefaultQueue is the queue capacity of [New] when given 0.
const DefaultQueue = 1024

// options are the verification rules of both paths (see the package doc).
var options = &voi.Options{Verify: voi.VerifyOptionsZIP_215}

// Key is an Ed25519 public key in the expanded form both paths use (about
// 1.5 KiB). Build it once per key; it is safe for concurrent use.
type Key struct {
	x   *voi.ExpandedPublicKey
	pub ed25519.PublicKey
}

// NewKey expands pub. It fails if pub is not 32 bytes or not the encoding
// of a curve point.
func NewKey(pub ed25519.PublicKey) (*Key, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("ed25519 public key of %d bytes", len(pub))
	}
	x, err := voi.NewExpandedPublicKey(voi.PublicKey(pub))
	if err != nil {
		return nil, errors.New("ed25519 public key is not a curve point")
	}
	return &Key{x: x, pub: append(ed25519.PublicKey(nil), pub...)}, nil
}

// Public returns the key as given to [NewKey].
func (k *Key) Public() ed25519.PublicKey { return k.pub }

// Verify reports whether sig is a valid signature of msg by k, alone, with
// the rules of the package doc. A nil Key verifies nothing.
func (k *Key) Verify(msg, sig []byte) bool {
	if k == nil {
		return false
	}
	return voi.VerifyExpandedWithOptions(k.x, msg, sig, options)
}

// Stats counts what a Batcher did.
type Stats struct {
	Batches uint64 // batches of two or more verified: Passed + Failed
	Batched uint64 // signatures in those batches
	Passed  uint64 // batches whose every entry was valid
	Failed  uint64 // batches with a bad entry (each entry then checked alone)
	Alone   uint64 // requests the worker found alone and verified singly
	Inline  uint64 // requests verified by their caller: queue full, batcher closed, or never batchable
}

// request is one submitted check, recycled through reqPool.
type request struct {
	key      *Key
	msg, sig []byte
	ok       bool
	done     chan struct{}
}

var reqPool = sync.Pool{New: func() any { return &request{done: make(chan struct{}, 1)} }}

// Batcher verifies submitted signatures in batches. Its methods are safe for
// concurrent use.
type Batcher struct {
	mu     sync.RWMutex // held for reading by each submission, for writing by Close
	closed bool
	queue  chan *request
	wg     sync.WaitGroup

	passed, failed, batched, alone, inline atomic.Uint64

	hold func() // tests: called by the worker before each verification
}

// New starts a Batcher whose queue holds up to queue requests (0:
// [DefaultQueue]) and whose workers number workers (0: GOMAXPROCS). Close
// stops it.
func New(queue, workers int) *Batcher { return newBatcher(queue, workers, nil) }

func newBatcher(queue, workers int, hold func()) *Batcher {
	if queue <= 0 {
		queue = DefaultQueue
	}
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	b := &Batcher{queue: make(chan *request, queue), hold: hold}
	for range workers {
		b.wg.Go(b.work)
	}
	return b
}

// Verify reports whether sig is a valid signature of msg by k: the verdict
// of [Key.Verify], reached in a batch when others are pending. It waits for
// the verdict; msg and sig must not change until it returns.
func (b *Batcher) Verify(k *Key, msg, sig []byte) bool {
	if k == nil || len(sig) != voi.SignatureSize {
		b.inline.Add(1)
		return k.Verify(msg, sig) // refused without a batch's help
	}
	r := reqPool.Get().(*request)
	r.key, r.msg, r.sig = k, msg, sig
	queued := false
	b.mu.RLock()
	if !b.closed {
		select {
		case b.queue <- r:
			queued = true
		default: // full: verified here
		}
	}
	b.mu.RUnlock()
	var ok bool
	if queued {
		<-r.done
		ok = r.ok
	} else {
		b.inline.Add(1)
		ok = k.Verify(msg, sig)
	}
	*r = request{done: r.done}
	reqPool.Put(r)
	return ok
}

// Close stops accepting requests (later ones are verified by their
// callers), lets the workers finish those queued, and waits for them.
// It may be called more than once.
func (b *Batcher) Close() {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.queue)
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// Stats returns the counts so far.
func (b *Batcher) Stats() Stats {
	passed, failed := b.passed.Load(), b.failed.Load()
	return Stats{Batches: passed + failed, Batched: b.batched.Load(), Passed: passed, Failed: failed,
		Alone: b.alone.Load(), Inline: b.inline.Load()}
}

// work is one worker: it takes a request, then whatever else is pending,
// and answers them all.
func (b *Batcher) work() {
	bv := voi.NewBatchVerifierWithCapacity(MaxBatch)
	batch := make([]*request, 0, MaxBatch)
	for r := range b.queue {
		batch = append(batch[:0], r)
		if len(b.queue) == 0 {
			// Let the goroutines that are ready to run submit first: on
			// one CPU the submitter that woke this worker would otherwise
			// hand it the CPU before any other could join. With nothing
			// else ready this returns at once.
			runtime.Gosched()
		}
		batch = b.fill(batch)
		if b.hold != nil {
			b.hold()
		}
		b.verify(bv, batch)
		for i, r := range batch {
			r.done <- struct{}{}
			batch[i] = nil
		}
	}
}

// fill appends pending requests to batch, up to MaxBatch, without waiting.
func (b *Batcher) fill(batch []*request) []*request {
	for len(batch) < MaxBatch {
		select {
		case r, ok := <-b.queue:
			if !ok {
				return batch
			}
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

// verify sets the verdict of every request of batch.
func (b *Batcher) verify(bv *voi.BatchVerifier, batch []*request) {
	if len(batch) == 1 {
		b.alone.Add(1)
		batch[0].ok = batch[0].key.Verify(batch[0].msg, batch[0].sig)
		return
	}
	bv.Reset()
	for _, r := range batch {
		bv.AddExpandedWithOptions(r.key.x, r.msg, r.sig, options)
	}
	all, valid := bv.Verify(nil)
	for i, r := range batch {
		r.ok = valid[i]
	}
	b.batched.Add(uint64(len(batch)))
	if all {
		b.passed.Add(1)
	} else {
		b.failed.Add(1)
	}
}
