package spool

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// request is one Append, Remove or Forget waiting for the committer.
type request struct {
	// Append
	dev   string
	seq   uint64
	mark  []byte // stored with the last seq
	data  []byte // the record's data, kept by the tail
	value []byte // encoded q value
	size  int64  // len(data)
	at    int64  // enqueue time, Unix ms
	key   uint64 // assigned by the commit, 0 if refused
	res   Result // the replay rule's judgement, set by the commit
	// Remove
	keys []uint64
	// Forget
	forget bool
	// Advance: an append that commits seq and mark without a record
	seqOnly bool

	done chan error // buffered 1
}

var requestPool = sync.Pool{New: func() any { return &request{done: make(chan error, 1)} }}

// isAppend reports whether r is an Append (not a Remove or Forget).
func (r *request) isAppend() bool { return r.keys == nil && !r.forget && !r.seqOnly }

// commitLoop is the committer goroutine: it drains the request channel in
// batches, one write transaction per batch.
func (q *Queue) commitLoop() {
	defer close(q.stopped)
	batch := make([]*request, 0, q.maxBatch)
	var (
		timer *time.Timer
		prev  int // requests in the previous commit
	)
	for r := range q.reqs {
		batch = q.gather(append(batch[:0], r), nil)
		if q.delay > 0 && len(batch) < q.maxBatch && (len(batch) > 1 || prev > 1) {
			if timer == nil {
				timer = time.NewTimer(q.delay)
			} else {
				timer.Reset(q.delay)
			}
			batch = q.gather(batch, timer.C)
			timer.Stop()
		}
		prev = len(batch)
		q.commit(batch)
		clear(batch)
		// The callers just answered were made runnable on this goroutine's
		// P. Were the next commit to start at once, its write and fsync
		// syscalls would hold that P with them queued behind it until the
		// runtime hands the P off, while they are exactly who sends the
		// next requests. Yield so they run first: the next batch is
		// larger, and fewer fsyncs serve the same records.
		runtime.Gosched()
	}
}

// gather adds waiting requests to batch, up to maxBatch: those already
// queued when until is nil, else those arriving until it fires. It stops
// early when the request channel is closed (the loop then ends after this
// batch).
func (q *Queue) gather(batch []*request, until <-chan time.Time) []*request {
	for len(batch) < q.maxBatch {
		var (
			r  *request
			ok bool
		)
		if until == nil {
			select {
			case r, ok = <-q.reqs:
			default:
				return batch
			}
		} else {
			select {
			case r, ok = <-q.reqs:
			case <-until:
				return batch
			}
		}
		if !ok {
			return batch
		}
		batch = append(batch, r)
	}
	return batch
}

// batchState is the outcome of one commit, computed inside the transaction.
type batchState struct {
	seen     map[string]uint64 // last seq per device, including this batch
	marks    map[string][]byte // mark of that seq
	touched  map[string]bool   // devices with an accepted append
	forgot   map[string]bool   // devices whose last seq is forgotten
	next     uint64            // next global key after the batch
	added    int
	addBytes int64
	removed  int
	remBytes int64
	oldest   bool  // oldestAt was recomputed
	oldestAt int64 // enqueue time of the first record after the batch
	logged   bool  // a lastlog value was added
	compact  bool  // "last" was brought up to date and lastlog emptied
	// slab holds the keys and values of 8 bytes given to Put: bbolt keeps
	// references to them until the commit, so each gets its own.
	slab []byte
}

// newBatchState is the empty state of a commit of n requests.
func (q *Queue) newBatchState(n int) batchState {
	return batchState{
		seen:    make(map[string]uint64),
		marks:   make(map[string][]byte),
		touched: make(map[string]bool),
		forgot:  make(map[string]bool),
		next:    q.next,
		slab:    make([]byte, 0, 8*(2*n+1)),
	}
}

// be returns v big-endian in 8 bytes of the slab.
func (st *batchState) be(v uint64) []byte {
	st.slab = binary.BigEndian.AppendUint64(st.slab, v)
	return st.slab[len(st.slab)-8:]
}

// commit runs one write transaction for the batch, counts it (Commits,
// OnCommit) and then answers every request, so that a caller whose request
// it served sees it counted. Only the committer writes q.last, q.next and
// the count fields, so it reads them without the lock.
func (q *Queue) commit(batch []*request) {
	var st batchState
	start := time.Now()
	err := q.db.Update(func(tx *bolt.Tx) error {
		// Everything derived here lives in st (and the requests' key and
		// res) and is reset first, so the function could safely run again
		// (bbolt's Batch would re-run it).
		st = q.newBatchState(len(batch))
		return q.commitTx(tx, batch, &st)
	})
	q.mu.Lock()
	q.release(batch)
	if err == nil {
		q.apply(batch, &st)
	}
	q.mu.Unlock()
	q.commits.Add(1)
	if q.onCommit != nil {
		q.onCommit(len(batch), time.Since(start))
	}
	if err != nil {
		err = fmt.Errorf("commit queue: %w", err)
	}
	for _, r := range batch {
		r.done <- err
	}
	if err == nil && st.added > 0 {
		select {
		case q.notify <- struct{}{}:
		default:
		}
	}
}

// commitTx writes the batch's removes, forgets and appends, then the state
// they change: last seqs, the next key and the oldest record's time.
func (q *Queue) commitTx(tx *bolt.Tx, batch []*request, st *batchState) error {
	qb := tx.Bucket(bucketQueue)
	// Keys only grow: fill pages completely instead of splitting them
	// in half, which halves the pages each commit writes.
	qb.FillPercent = 1.0
	for _, r := range batch {
		var err error
		switch {
		case r.keys != nil:
			err = st.remove(qb, r.keys)
		case r.forget:
			st.forget(r.dev)
		case r.seqOnly:
			if q.judgeTx(st, r) {
				st.seen[r.dev], st.marks[r.dev], st.touched[r.dev] = r.seq, r.mark, true
			}
		default:
			err = q.appendTx(qb, st, r)
		}
		if err != nil {
			return err
		}
	}
	return q.stateTx(tx, qb, st)
}

// remove deletes the records with the given keys; unknown keys are ignored.
func (st *batchState) remove(qb *bolt.Bucket, keys []uint64) error {
	var kb [8]byte // Get and Delete keys: not retained
	for _, k := range keys {
		binary.BigEndian.PutUint64(kb[:], k)
		v := qb.Get(kb[:])
		if v == nil {
			continue
		}
		e, _, err := decodeValue(v)
		if err != nil {
			return fmt.Errorf("queue key %x: %w", k, err)
		}
		if err := qb.Delete(kb[:]); err != nil {
			return fmt.Errorf("delete %d: %w", k, err)
		}
		st.removed++
		st.remBytes += int64(len(e.Data))
	}
	return nil
}

// forget drops dev's last seq: its next append in the batch, or later, is
// judged as a first one.
func (st *batchState) forget(dev string) {
	delete(st.seen, dev)
	delete(st.marks, dev)
	delete(st.touched, dev)
	st.forgot[dev] = true
}

// appendTx judges r against its device's last seq (this batch's, else the
// committed one) and writes it if the rule accepts it.
func (q *Queue) appendTx(qb *bolt.Bucket, st *batchState, r *request) error {
	if !q.judgeTx(st, r) {
		return nil
	}
	if err := qb.Put(st.be(st.next), r.value); err != nil {
		return fmt.Errorf("put %d: %w", st.next, err)
	}
	r.key = st.next
	st.next++
	st.seen[r.dev] = r.seq
	st.marks[r.dev] = r.mark
	st.touched[r.dev] = true
	st.added++
	st.addBytes += r.size
	return nil
}

// judgeTx sets r's judgement against its device's last seq (this batch's,
// else the committed one) and reports whether the rule accepts it.
func (q *Queue) judgeTx(st *batchState, r *request) bool {
	last, ok := st.seen[r.dev]
	lastMark := st.marks[r.dev]
	if !ok && !st.forgot[r.dev] {
		last, ok = q.last[r.dev]
		lastMark = q.marks[r.dev]
	}
	r.key = 0
	r.res = judge(r.seq, r.mark, last, lastMark, ok, q.maxJump)
	return r.res.Outcome == Accepted
}

// stateTx writes what the batch changed besides the records: the last
// seqs, the next key, and finds the oldest record's enqueue time.
func (q *Queue) stateTx(tx *bolt.Tx, qb *bolt.Bucket, st *batchState) error {
	if len(st.touched) > 0 || len(st.forgot) > 0 {
		if err := q.logLast(tx, st); err != nil {
			return err
		}
	}
	if st.added > 0 {
		if err := tx.Bucket(bucketMeta).Put(keyNext, st.be(st.next)); err != nil {
			return fmt.Errorf("put next: %w", err)
		}
	}
	if st.removed > 0 || q.count == 0 {
		st.oldest = true
		if k, v := qb.Cursor().First(); k != nil {
			_, at, err := decodeValue(v)
			if err != nil {
				return fmt.Errorf("queue key %x: %w", k, err)
			}
			st.oldestAt = at
		}
	}
	return nil
}

// release returns the batch's appends' reservations against the bounds.
// q.mu is held.
func (q *Queue) release(batch []*request) {
	for _, r := range batch {
		if r.isAppend() {
			q.resCount--
			q.resBytes -= r.size
		}
	}
}

// apply brings the in-memory state up to the committed batch. q.mu is held.
func (q *Queue) apply(batch []*request, st *batchState) {
	for _, r := range batch {
		switch {
		case r.keys != nil:
			for _, k := range r.keys {
				q.tail.remove(k)
			}
		case r.key != 0:
			q.tail.add(r.key, r.dev, r.seq, r.data)
		}
	}
	q.next = st.next
	switch {
	case st.compact:
		q.logNext, q.logLen = 0, 0
		clear(q.dirty)
	case st.logged:
		q.logNext++
		q.logLen++
		for dev := range st.touched {
			q.dirty[dev] = struct{}{}
		}
	}
	q.count += st.added - st.removed
	q.bytes += st.addBytes - st.remBytes
	if st.oldest {
		q.oldestAt = st.oldestAt
	}
	for dev := range st.forgot {
		delete(q.last, dev)
		delete(q.marks, dev)
	}
	for dev := range st.touched {
		q.last[dev] = st.seen[dev]
		if m := st.marks[dev]; m != nil {
			q.marks[dev] = bytes.Clone(m)
		} else {
			delete(q.marks, dev)
		}
	}
}

// logLast records the last seqs of the batch's devices: one lastlog value,
// or, every compactEvery commits (and whenever a device is forgotten), the
// devices changed since the previous compaction written to "last" and
// lastlog emptied. It runs inside the commit's transaction and changes q's
// state only through st (the caller applies it once the commit succeeded).
func (q *Queue) logLast(tx *bolt.Tx, st *batchState) error {
	if q.logLen+1 < compactEvery && len(st.forgot) == 0 {
		return q.appendLastlog(tx, st)
	}
	return q.compactLast(tx, st)
}

// appendLastlog adds one lastlog value with the batch's devices.
func (q *Queue) appendLastlog(tx *bolt.Tx, st *batchState) error {
	v := []byte{logVersion}
	for dev := range st.touched {
		v = appendLog(v, dev, st.seen[dev], st.marks[dev])
	}
	lg := tx.Bucket(bucketLog)
	lg.FillPercent = 1.0 // keys only grow
	if err := lg.Put(binary.BigEndian.AppendUint64(nil, q.logNext), v); err != nil {
		return fmt.Errorf("put lastlog: %w", err)
	}
	st.logged = true
	return nil
}

// compactLast writes the last seqs changed since the previous compaction,
// and the batch's, to "last", deletes the forgotten devices' and empties
// lastlog.
func (q *Queue) compactLast(tx *bolt.Tx, st *batchState) error {
	lb := tx.Bucket(bucketLast)
	put := func(dev string, seq uint64, mark []byte) error {
		if err := lb.Put([]byte(dev), encodeLast(seq, mark)); err != nil {
			return fmt.Errorf("put last seq: %w", err)
		}
		return nil
	}
	for dev := range q.dirty {
		if _, ok := st.touched[dev]; ok || st.forgot[dev] {
			continue
		}
		if err := put(dev, q.last[dev], q.marks[dev]); err != nil {
			return err
		}
	}
	for dev := range st.touched {
		if err := put(dev, st.seen[dev], st.marks[dev]); err != nil {
			return err
		}
	}
	for dev := range st.forgot {
		if _, ok := st.touched[dev]; ok {
			continue // appended after it was forgotten
		}
		if err := lb.Delete([]byte(dev)); err != nil {
			return fmt.Errorf("delete last seq: %w", err)
		}
	}
	if err := tx.DeleteBucket(bucketLog); err != nil {
		return fmt.Errorf("empty lastlog: %w", err)
	}
	if _, err := tx.CreateBucket(bucketLog); err != nil {
		return fmt.Errorf("empty lastlog: %w", err)
	}
	st.compact = true
	return nil
}
