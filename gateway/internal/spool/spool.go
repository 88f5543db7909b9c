// Package spool is the gateway's durable store-and-forward queue
// (docs/protocol.md, docs/apps.md#messages): a message the gateway has acknowledged to a
// device is on disk, and stays there until the cloud has acknowledged it.
//
// # Storage
//
// The queue is one bbolt file with four buckets:
//
//   - q: key = big-endian uint64 global sequence ([Entry.Key]), value =
//     version byte 1, uvarint len(dev), dev, uvarint seq, varint enqueue
//     time (Unix milliseconds), data.
//   - last: device ID -> big-endian uint64 last accepted seq, the replay
//     window of docs/protocol.md#time-sequence-numbers-and-replay, kept across restarts, followed by the
//     caller's mark of that record (see [Queue.AppendMarked]), if any.
//   - lastlog: the last seqs written since "last" was last brought up to
//     date. key = big-endian uint64 commit number, value = version byte 1,
//     then for each device of the commit: uvarint len(dev), dev, uvarint
//     seq, uvarint len(mark), mark. Open applies them over "last" in key
//     order.
//   - meta: "next" -> big-endian uint64 next global sequence, so keys never
//     go back even when the queue empties and the gateway restarts.
//
// A commit appends one lastlog value instead of updating each of its
// devices in "last": devices are spread over the whole of "last", so a
// batch of a few dozen devices would rewrite most of its pages, while
// lastlog grows at its end. Every [compactEvery] commits, one commit writes
// the devices changed since the previous compaction to "last" and empties
// lastlog, so Open has little to replay.
//
// # Group commit
//
// [Queue.Append] returns only when its record is fsynced. Concurrent callers
// share fsyncs: each call puts a request on a channel, and one committer
// goroutine takes everything that is queued (up to [Options.MaxBatch]), runs
// one bbolt write transaction (one commit, one fsync pair) and answers each
// caller. While a commit runs, new requests accumulate for the next one, so
// batches grow with load. While requests arrive concurrently, the committer
// also waits up to [Options.CommitDelay] (1 ms) for more before committing:
// at moderate load it would otherwise commit a handful of records at a
// time, and each commit's two fdatasyncs cost the same CPU whatever its
// size. No timer delays a lone caller. After answering
// a batch the committer yields the processor, so the callers it woke run
// before the next commit's syscalls can hold it. [Queue.Remove]
// goes through the same committer, so acknowledgements from the cloud share
// those commits too.
//
// The replay check happens in the committer, against the durable last seq of
// each device and against earlier requests of the same batch: a replayed
// request alone fails with a [verdict.Replay] error, the others in the batch
// commit.
//
// # Replay
//
// A seq at or below the device's last accepted one is a replay; so is one
// more than [Options.MaxSeqJump] past it (or, for a device's first record,
// past 0), so one record cannot use up a device's seq space. [Queue.Forget]
// resets a device (the operator's tool, on a stopped gateway).
//
// # Damage
//
// [Open] checks the file before bbolt maps it and refuses a damaged or lost
// queue ([ErrCorrupt], [ErrLost]) with an error instead of a crash;
// [Reset] moves such a file aside.
//
// # Bounds
//
// [Options.MaxRecords] and [Options.MaxBytes] (the sum of Data lengths)
// bound the queue; an Append that would exceed them fails at once with
// [ErrFull] without touching the disk. Requests waiting for the committer
// count against the bound.
//
// # Reading
//
// [Queue.Peek] reads the disk, except when the records asked for are among
// the newest ones committed (up to 16,384 records and 16 MiB of data): those
// it serves from memory, sharing the data slices given to Append. That is
// the relay's case when it keeps up with the devices.
package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vitalgate/vitalgate/internal/verdict"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Defaults of [Options].
const (
	DefaultMaxRecords = 1_000_000
	DefaultMaxBytes   = 1 << 30
	DefaultMaxBatch   = 1000
	// DefaultCommitDelay: at 5,000 msg/s from 2,000 devices on two cores
	// it cut the commits by about 60 % and the machine's load from ~85 % to
	// ~71 % (docs/performance.md, finding 16).
	DefaultCommitDelay = time.Millisecond
	// DefaultMaxSeqJump: 2^32 is 6.8 years of a device at 20 messages
	// a second, the default rate limit, and leaves 2^32 such jumps before
	// a seq could reach 2^64-1.
	DefaultMaxSeqJump = 1 << 32
)

var (
	bucketQueue = []byte("q")
	bucketLast  = []byte("last")
	bucketLog   = []byte("lastlog")
	bucketMeta  = []byte("meta")
	keyNext     = []byte("next")
)

const valueVersion = 1

// maxDevLen bounds device IDs (bbolt keys; the gateway's are at most 64).
const maxDevLen = 1024

// logVersion is the version byte of a lastlog value.
const logVersion = 1

// compactEvery is the number of lastlog values after which a commit brings
// "last" up to date and empties lastlog.
const compactEvery = 2048

// ErrFull is returned by [Queue.Append] when the queue holds MaxRecords
// records or MaxBytes bytes of data (counting appends still waiting for
// their commit). Nothing was written; the gateway answers `overloaded` and
// the device keeps its message.
var ErrFull = errors.New("spool: queue full")

// ErrClosed is returned by operations on a closed [Queue].
var ErrClosed = errors.New("spool: queue closed")

// ErrDuplicate is returned by [Queue.AppendMarked] for the device's last
// accepted seq with the same (non-empty) mark: the record is already stored,
// nothing was written. Two copies of one message may race (a device resends
// on a new connection while the first copy waits for its commit); one is
// stored and the other gets ErrDuplicate, whichever order they commit in.
var ErrDuplicate = errors.New("spool: duplicate of the last accepted record")

// Options configure [Open]. Zero values take the defaults.
type Options struct {
	// MaxRecords bounds the number of queued records (default 1,000,000).
	MaxRecords int
	// MaxBytes bounds the sum of the queued records' Data lengths (default 1 GiB).
	MaxBytes int64
	// NoSync skips fsync: a crash may lose acknowledged records. Tests only.
	NoSync bool
	// MaxBatch bounds the number of requests in one commit (default 1000).
	MaxBatch int
	// CommitDelay applies while requests arrive concurrently (the previous
	// commit, or the requests already waiting, number more than one): the
	// committer then waits up to this long after a batch's first request
	// for more, up to MaxBatch, before committing. Each commit costs two
	// fdatasyncs and its page writes whatever its size, so fewer, larger
	// commits leave more CPU to everything else, at up to this much added
	// latency. A lone appender is never delayed. 0: DefaultCommitDelay;
	// negative: commit as soon as the committer is free.
	CommitDelay time.Duration
	// OnCommit, when set, is called by the committer after each write
	// transaction with the number of requests it served and the time the
	// transaction took (its page writes and fdatasyncs, not the delay).
	OnCommit func(requests int, took time.Duration)
	// MaxSeqJump bounds how far a device's seq may advance past its last
	// accepted one, and a device's first seq (counted from 0): a record
	// beyond it is refused as a replay ("seq jump"), so that no single
	// record (say seq 2^64-1, signed with a stolen key) closes a device's
	// seq space for good. 0: DefaultMaxSeqJump.
	MaxSeqJump uint64
}

// Entry is one queued record.
type Entry struct {
	Key  uint64 // global, monotonic order of the queue; never reused
	Dev  string // device ID
	Seq  uint64 // the device's sequence number
	Data []byte // opaque: the gateway stores topic, a 0 byte, then the cloud payload
}

// request is one Append or Remove waiting for the committer.
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
	// Remove
	keys []uint64
	// Forget
	forget bool

	done chan error // buffered 1
}

var requestPool = sync.Pool{New: func() any { return &request{done: make(chan error, 1)} }}

// Queue is the durable queue. Its methods are safe for concurrent use.
type Queue struct {
	db       *bolt.DB
	maxRecs  int
	maxBytes int64
	maxBatch int
	maxJump  uint64
	delay    time.Duration
	onCommit func(int, time.Duration)
	notify   chan struct{}
	commits  atomic.Uint64

	// closeMu guards closed and sends on reqs: Append and Remove send under
	// the read lock, Close closes reqs under the write lock.
	closeMu sync.RWMutex
	closed  bool
	reqs    chan *request
	stopped chan struct{} // closed when the committer has exited

	// mu guards the in-memory state below. Lock order: closeMu, then mu.
	mu        sync.Mutex
	last      map[string]uint64 // durable last seq per device
	marks     map[string][]byte // mark of each device's last accepted record
	count     int               // committed records
	bytes     int64             // committed data bytes
	resCount  int               // appends waiting for the committer
	resBytes  int64
	oldestAt  int64 // enqueue time (Unix ms) of the oldest record, 0 if empty
	tail      *tail // the newest records, for Peek
	closeErr  error
	closeOnce sync.Once

	// Owned by the committer goroutine.
	next    uint64              // next global key
	logNext uint64              // next lastlog key
	logLen  int                 // lastlog values since the last compaction
	dirty   map[string]struct{} // devices whose last seq is in lastlog only
}

// Open opens or creates the queue at path and recovers its state: bbolt's
// commits are atomic, so after a crash the file holds exactly the committed
// transactions. Open scans the queue once to count records and bytes.
//
// Open does not trust the file: it refuses one that is damaged with an
// error wrapping [ErrCorrupt] (see checkFile; bbolt's consistency check
// runs too), and, once a queue was created at path (its marker file, path
// + [MarkerSuffix], says so), a missing or empty file with [ErrLost]. It
// never crashes on a bad file. [Reset] moves a refused queue aside.
func Open(path string, o Options) (q *Queue, err error) {
	if o.MaxRecords <= 0 {
		o.MaxRecords = DefaultMaxRecords
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.CommitDelay == 0 {
		o.CommitDelay = DefaultCommitDelay
	}
	if o.MaxSeqJump == 0 {
		o.MaxSeqJump = DefaultMaxSeqJump
	}
	if err := preflight(path); err != nil {
		return nil, err
	}
	q = &Queue{
		maxRecs:  o.MaxRecords,
		maxBytes: o.MaxBytes,
		maxBatch: o.MaxBatch,
		maxJump:  o.MaxSeqJump,
		delay:    o.CommitDelay,
		onCommit: o.OnCommit,
		notify:   make(chan struct{}, 1),
		reqs:     make(chan *request, 4*o.MaxBatch),
		stopped:  make(chan struct{}),
		last:     make(map[string]uint64),
		marks:    make(map[string][]byte),
		dirty:    make(map[string]struct{}),
	}
	if err := q.openChecked(path, o.NoSync); err != nil {
		return nil, err
	}
	if err := writeMarker(path, o.NoSync); err != nil {
		q.db.Close()
		return nil, err
	}
	q.tail = newTail(q.next, tailSlots, tailMaxBytes)
	go q.commitLoop()
	return q, nil
}

// openChecked opens the bbolt file, checks it and loads q's state from it.
// The file's structure was checked before (checkFile); should it still hold
// something bbolt or load cannot digest, the panic, or the memory fault
// (debug.SetPanicOnFault covers this goroutine while it runs), becomes an
// [ErrCorrupt] error instead of a crash.
func (q *Queue) openChecked(path string, noSync bool) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if q.db != nil {
				// A panic inside a transaction may leave bbolt's locks
				// held: close without waiting on them for long.
				closed := make(chan struct{})
				go func() { q.db.Close(); close(closed) }()
				select {
				case <-closed:
				case <-time.After(time.Second):
				}
			}
			err = fmt.Errorf("%w: %s: %v", ErrCorrupt, path, r)
		}
	}()
	q.db, err = bolt.Open(path, 0o600, &bolt.Options{
		Timeout:        time.Second,
		FreelistType:   bolt.FreelistMapType,
		NoFreelistSync: true,
		NoSync:         noSync,
	})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return fmt.Errorf("open queue %s: in use by another process (a running gateway?)", path)
		}
		if errors.Is(err, berrors.ErrInvalid) || errors.Is(err, berrors.ErrVersionMismatch) || errors.Is(err, berrors.ErrChecksum) {
			return fmt.Errorf("%w: %s: %v", ErrCorrupt, path, err)
		}
		return fmt.Errorf("open queue %s: %w", path, err)
	}
	if err := q.db.View(boltCheck); err != nil {
		q.db.Close()
		return fmt.Errorf("%w: %s: %v", ErrCorrupt, path, err)
	}
	if err := q.load(); err != nil {
		q.db.Close()
		return fmt.Errorf("%w: %s: %v", ErrCorrupt, path, err)
	}
	return nil
}

// boltCheck runs bbolt's consistency check (key order across pages,
// reachability) and returns its first finding.
func boltCheck(tx *bolt.Tx) error {
	var first error
	n := 0
	for err := range tx.Check() {
		if first == nil {
			first = err
		}
		n++
	}
	if n > 1 {
		return fmt.Errorf("%w (and %d more problems)", first, n-1)
	}
	return first
}

// load creates the buckets and rebuilds the in-memory state.
func (q *Queue) load() error {
	return q.db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketQueue, bucketLast, bucketLog, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		if v := tx.Bucket(bucketMeta).Get(keyNext); len(v) == 8 {
			q.next = binary.BigEndian.Uint64(v)
		}
		err := tx.Bucket(bucketLast).ForEach(func(k, v []byte) error {
			if len(v) < 8 {
				return fmt.Errorf("last seq of %q: bad length %d", k, len(v))
			}
			q.last[string(k)] = binary.BigEndian.Uint64(v)
			if len(v) > 8 {
				q.marks[string(k)] = bytes.Clone(v[8:])
			}
			return nil
		})
		if err != nil {
			return err
		}
		lc := tx.Bucket(bucketLog).Cursor()
		for k, v := lc.First(); k != nil; k, v = lc.Next() {
			if len(k) != 8 {
				return fmt.Errorf("lastlog key %x: bad length", k)
			}
			err := decodeLog(v, func(dev string, seq uint64, mark []byte) {
				// Seqs only grow; never let an entry lower one (a file
				// written by an older gateway after this one ran).
				if last, ok := q.last[dev]; ok && seq < last {
					return
				}
				q.last[dev] = seq
				if len(mark) > 0 {
					q.marks[dev] = bytes.Clone(mark)
				} else {
					delete(q.marks, dev)
				}
				q.dirty[dev] = struct{}{}
			})
			if err != nil {
				return fmt.Errorf("lastlog key %x: %w", k, err)
			}
			q.logNext = binary.BigEndian.Uint64(k) + 1
			q.logLen++
		}
		c := tx.Bucket(bucketQueue).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if len(k) != 8 {
				return fmt.Errorf("queue key %x: bad length", k)
			}
			e, at, err := decodeValue(v)
			if err != nil {
				return fmt.Errorf("queue key %x: %w", k, err)
			}
			if q.count == 0 {
				q.oldestAt = at
			}
			q.count++
			q.bytes += int64(len(e.Data))
			if key := binary.BigEndian.Uint64(k); key >= q.next {
				q.next = key + 1
			}
		}
		if q.next == 0 {
			q.next = 1
		}
		return nil
	})
}

// Last returns the last accepted (committed) seq of dev, the mark stored
// with it (nil if none), and whether dev has any. The mark must not be
// modified.
func (q *Queue) Last(dev string) (seq uint64, mark []byte, ok bool) {
	q.mu.Lock()
	seq, ok = q.last[dev]
	mark = q.marks[dev]
	q.mu.Unlock()
	return seq, mark, ok
}

// LastSeq returns the last accepted (committed) seq of dev, and whether dev
// has any.
func (q *Queue) LastSeq(dev string) (uint64, bool) {
	q.mu.Lock()
	s, ok := q.last[dev]
	q.mu.Unlock()
	return s, ok
}

// Append stores a record durably and returns once it is on disk (fsynced
// unless [Options.NoSync]). It fails with a [*verdict.Error] Replay if seq is
// not above the device's last accepted seq (including appends committed in
// the same batch), with [ErrFull] at the queue's bound, and with
// [ErrClosed] after Close. The queue keeps data (Peek may return it): the
// caller must not modify it afterwards.
func (q *Queue) Append(dev string, seq uint64, data []byte) error {
	return q.AppendMarked(dev, seq, nil, data)
}

// AppendMarked is [Queue.Append] that also stores mark (at most 64 bytes,
// e.g. a digest of the device's message) with the device's last seq, in the
// same transaction; [Queue.Last] returns it, across restarts. The gateway
// uses it to tell a device's resend of its last message from a replay.
func (q *Queue) AppendMarked(dev string, seq uint64, mark, data []byte) error {
	if len(mark) > 64 {
		return fmt.Errorf("spool: mark of %d bytes, limit 64", len(mark))
	}
	if dev == "" || len(dev) > maxDevLen {
		return fmt.Errorf("spool: device ID of %d bytes, want 1 to %d", len(dev), maxDevLen)
	}
	size := int64(len(data))
	q.mu.Lock()
	if last, ok := q.last[dev]; ok && seq <= last {
		err := seqError(seq, last, mark, q.marks[dev])
		q.mu.Unlock()
		return err
	} else if err := q.CheckJump(seq, last, ok); err != nil {
		q.mu.Unlock()
		return err
	}
	if q.count+q.resCount >= q.maxRecs || q.bytes+q.resBytes+size > q.maxBytes {
		q.mu.Unlock()
		return ErrFull
	}
	q.resCount++
	q.resBytes += size
	q.mu.Unlock()

	r := requestPool.Get().(*request)
	r.dev, r.seq, r.mark, r.data, r.size, r.keys, r.key = dev, seq, mark, data, size, nil, 0
	r.at = time.Now().UnixMilli()
	r.value = encodeValue(r.value[:0], dev, seq, r.at, data)
	err := q.submit(r)
	if errors.Is(err, ErrClosed) {
		q.mu.Lock()
		q.resCount--
		q.resBytes -= size
		q.mu.Unlock()
	}
	r.value, r.mark, r.data = r.value[:0], nil, nil
	if cap(r.value) > 64<<10 {
		r.value = nil // do not pool large buffers
	}
	requestPool.Put(r)
	return err
}

// submit hands r to the committer and waits for its answer.
func (q *Queue) submit(r *request) error {
	q.closeMu.RLock()
	if q.closed {
		q.closeMu.RUnlock()
		return ErrClosed
	}
	q.reqs <- r
	q.closeMu.RUnlock()
	return <-r.done
}

// CheckJump returns a [verdict.Replay] error with the detail "seq jump" if
// seq lies more than [Options.MaxSeqJump] past last, the device's last
// accepted seq (ok: it has one; a first seq counts from 0), nil otherwise.
// Seqs at or below last are not its concern.
func (q *Queue) CheckJump(seq, last uint64, ok bool) error {
	if !ok {
		last = 0
	}
	if seq > last && seq-last > q.maxJump {
		if !ok {
			return verdict.New(verdict.Replay, "seq jump: first seq %d of the device is over %d", seq, q.maxJump)
		}
		return verdict.New(verdict.Replay, "seq jump: seq %d is %d past last accepted %d, limit %d", seq, seq-last, last, q.maxJump)
	}
	return nil
}

func replayError(seq, last uint64) error {
	return verdict.New(verdict.Replay, "seq %d not above last accepted %d", seq, last)
}

// seqError is the answer to an append of seq at or below last, the device's
// last accepted seq, stored with lastMark.
func seqError(seq, last uint64, mark, lastMark []byte) error {
	if seq == last && len(mark) > 0 && bytes.Equal(mark, lastMark) {
		return ErrDuplicate
	}
	return replayError(seq, last)
}

// Peek returns up to max entries with keys above after, oldest first. Their
// Data must not be modified.
func (q *Queue) Peek(after uint64, max int) ([]Entry, error) {
	if max <= 0 {
		return nil, nil
	}
	q.closeMu.RLock()
	closed := q.closed
	q.closeMu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	q.mu.Lock()
	out, ok := q.tail.peek(after, max)
	q.mu.Unlock()
	if ok {
		return out, nil
	}
	return q.peekDisk(after, max)
}

// peekDisk is Peek from the file; the entries are copies.
func (q *Queue) peekDisk(after uint64, max int) ([]Entry, error) {
	var out []Entry
	err := q.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketQueue).Cursor()
		var from [8]byte
		if after == ^uint64(0) {
			return nil
		}
		binary.BigEndian.PutUint64(from[:], after+1)
		for k, v := c.Seek(from[:]); k != nil && len(out) < max; k, v = c.Next() {
			e, _, err := decodeValue(v)
			if err != nil {
				return fmt.Errorf("queue key %x: %w", k, err)
			}
			e.Key = binary.BigEndian.Uint64(k)
			e.Data = append([]byte(nil), e.Data...)
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, berrors.ErrDatabaseNotOpen) {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("peek queue: %w", err)
	}
	return out, nil
}

// Remove deletes the entries with the given keys, typically after the cloud
// acknowledged them. Unknown keys are ignored. The removal shares a commit
// with concurrent appends and returns once it is on disk.
func (q *Queue) Remove(keys ...uint64) error {
	if len(keys) == 0 {
		return nil
	}
	r := requestPool.Get().(*request)
	r.dev, r.value, r.size = "", r.value[:0], 0
	r.keys = keys
	err := q.submit(r)
	r.keys = nil
	requestPool.Put(r)
	return err
}

// Forget deletes dev's last accepted seq and its mark, durably: dev's next
// record is judged as a first one. It is the operator's reset of a device
// whose seq space was closed (see [Options.MaxSeqJump]), done on a stopped
// gateway. Records of dev already queued stay queued.
func (q *Queue) Forget(dev string) error {
	if dev == "" || len(dev) > maxDevLen {
		return fmt.Errorf("spool: device ID of %d bytes, want 1 to %d", len(dev), maxDevLen)
	}
	r := requestPool.Get().(*request)
	r.dev, r.value, r.size, r.keys, r.key, r.forget = dev, r.value[:0], 0, nil, 0, true
	err := q.submit(r)
	r.forget = false
	requestPool.Put(r)
	return err
}

// Len returns the number of queued (committed) records.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.count
}

// Bytes returns the sum of the queued records' Data lengths.
func (q *Queue) Bytes() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.bytes
}

// OldestAge returns how long the oldest queued record has waited, or 0 when
// the queue is empty.
func (q *Queue) OldestAge() time.Duration {
	q.mu.Lock()
	at, n := q.oldestAt, q.count
	q.mu.Unlock()
	if n == 0 {
		return 0
	}
	d := time.Since(time.UnixMilli(at))
	if d < 0 {
		return 0
	}
	return d
}

// Notify returns a channel that receives a value (non-blocking, capacity 1)
// after each commit that added records: the relay waits on it when it has
// nothing to send.
func (q *Queue) Notify() <-chan struct{} { return q.notify }

// Close stops accepting requests, waits for the committer to commit the
// requests already submitted, and closes the file. It is safe to call more
// than once; later calls return the first call's result.
func (q *Queue) Close() error {
	q.closeOnce.Do(func() {
		q.closeMu.Lock()
		q.closed = true
		close(q.reqs)
		q.closeMu.Unlock()
		<-q.stopped
		if err := q.db.Close(); err != nil {
			q.closeErr = fmt.Errorf("close queue: %w", err)
		}
	})
	return q.closeErr
}

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
		start := time.Now()
		q.commit(batch)
		q.commits.Add(1)
		if q.onCommit != nil {
			q.onCommit(len(batch), time.Since(start))
		}
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

// Commits returns the number of write transactions so far (each one
// fdatasyncs twice).
func (q *Queue) Commits() uint64 { return q.commits.Load() }

// batchState is the outcome of one commit, computed inside the transaction.
type batchState struct {
	errs     []error           // per request
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
}

// commit runs one write transaction for the batch and answers every request.
// Only the committer writes q.last, q.next and the count fields, so it reads
// them without the lock.
func (q *Queue) commit(batch []*request) {
	var st batchState
	err := q.db.Update(func(tx *bolt.Tx) error {
		// Everything derived here lives in st and is reset first, so the
		// function could safely run again (bbolt's Batch would re-run it).
		st = batchState{
			errs:    make([]error, len(batch)),
			seen:    make(map[string]uint64),
			marks:   make(map[string][]byte),
			touched: make(map[string]bool),
			forgot:  make(map[string]bool),
			next:    q.next,
		}
		qb, mb := tx.Bucket(bucketQueue), tx.Bucket(bucketMeta)
		// bbolt keeps references to the keys and values passed to Put until
		// the commit, so each gets its own 8 bytes from one slab.
		slab := make([]byte, 0, 8*(2*len(batch)+1))
		be := func(v uint64) []byte {
			slab = binary.BigEndian.AppendUint64(slab, v)
			return slab[len(slab)-8:]
		}
		var kb [8]byte // Get and Delete keys: not retained
		// Keys only grow: fill pages completely instead of splitting them
		// in half, which halves the pages each commit writes.
		qb.FillPercent = 1.0
		for i, r := range batch {
			if r.keys != nil {
				for _, k := range r.keys {
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
				continue
			}
			if r.forget {
				delete(st.seen, r.dev)
				delete(st.marks, r.dev)
				delete(st.touched, r.dev)
				st.forgot[r.dev] = true
				continue
			}
			last, ok := st.seen[r.dev]
			lastMark := st.marks[r.dev]
			if !ok && !st.forgot[r.dev] {
				last, ok = q.last[r.dev]
				lastMark = q.marks[r.dev]
			}
			if ok && r.seq <= last {
				st.errs[i] = seqError(r.seq, last, r.mark, lastMark)
				r.key = 0
				continue
			}
			if err := q.CheckJump(r.seq, last, ok); err != nil {
				st.errs[i] = err
				r.key = 0
				continue
			}
			if err := qb.Put(be(st.next), r.value); err != nil {
				return fmt.Errorf("put %d: %w", st.next, err)
			}
			r.key = st.next
			st.next++
			st.seen[r.dev] = r.seq
			st.marks[r.dev] = r.mark
			st.touched[r.dev] = true
			st.added++
			st.addBytes += r.size
		}
		if len(st.touched) > 0 || len(st.forgot) > 0 {
			if err := q.logLast(tx, &st); err != nil {
				return err
			}
		}
		if st.added > 0 {
			if err := mb.Put(keyNext, be(st.next)); err != nil {
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
	})

	q.mu.Lock()
	for _, r := range batch {
		if r.keys == nil && !r.forget {
			q.resCount--
			q.resBytes -= r.size
		}
	}
	if err == nil {
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
	q.mu.Unlock()

	if err != nil {
		err = fmt.Errorf("commit queue: %w", err)
	}
	for i, r := range batch {
		if err != nil {
			r.done <- err
		} else {
			r.done <- st.errs[i]
		}
	}
	if err == nil && st.added > 0 {
		select {
		case q.notify <- struct{}{}:
		default:
		}
	}
}

// logLast records the last seqs of the batch's devices: one lastlog value,
// or, every compactEvery commits, the devices changed since the previous
// compaction written to "last" and lastlog emptied. It runs inside the
// commit's transaction and changes q's state only through st (the caller
// applies it once the commit succeeded).
func (q *Queue) logLast(tx *bolt.Tx, st *batchState) error {
	if q.logLen+1 < compactEvery && len(st.forgot) == 0 {
		v := []byte{logVersion}
		for dev := range st.touched {
			mark := st.marks[dev]
			v = binary.AppendUvarint(v, uint64(len(dev)))
			v = append(v, dev...)
			v = binary.AppendUvarint(v, st.seen[dev])
			v = binary.AppendUvarint(v, uint64(len(mark)))
			v = append(v, mark...)
		}
		lg := tx.Bucket(bucketLog)
		lg.FillPercent = 1.0 // keys only grow
		if err := lg.Put(binary.BigEndian.AppendUint64(nil, q.logNext), v); err != nil {
			return fmt.Errorf("put lastlog: %w", err)
		}
		st.logged = true
		return nil
	}
	lb := tx.Bucket(bucketLast)
	put := func(dev string, seq uint64, mark []byte) error {
		v := append(binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(mark)), seq), mark...)
		if err := lb.Put([]byte(dev), v); err != nil {
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

// decodeLog calls f for each device of a lastlog value. mark aliases v.
func decodeLog(v []byte, f func(dev string, seq uint64, mark []byte)) error {
	if len(v) == 0 || v[0] != logVersion {
		return errors.New("unknown lastlog version")
	}
	v = v[1:]
	for len(v) > 0 {
		n, k := binary.Uvarint(v)
		if k <= 0 || n == 0 || n > uint64(len(v)-k) {
			return errors.New("bad device length")
		}
		dev := string(v[k : k+int(n)])
		v = v[k+int(n):]
		seq, k := binary.Uvarint(v)
		if k <= 0 {
			return errors.New("bad seq")
		}
		v = v[k:]
		n, k = binary.Uvarint(v)
		if k <= 0 || n > 64 || n > uint64(len(v)-k) {
			return errors.New("bad mark length")
		}
		f(dev, seq, v[k:k+int(n)])
		v = v[k+int(n):]
	}
	return nil
}

// encodeValue appends the q value of a record to b.
func encodeValue(b []byte, dev string, seq uint64, at int64, data []byte) []byte {
	b = append(b, valueVersion)
	b = binary.AppendUvarint(b, uint64(len(dev)))
	b = append(b, dev...)
	b = binary.AppendUvarint(b, seq)
	b = binary.AppendVarint(b, at)
	return append(b, data...)
}

// decodeValue parses a q value. Data aliases v.
func decodeValue(v []byte) (Entry, int64, error) {
	var e Entry
	if len(v) == 0 || v[0] != valueVersion {
		return e, 0, errors.New("unknown value version")
	}
	v = v[1:]
	n, k := binary.Uvarint(v)
	if k <= 0 || n > uint64(len(v)-k) {
		return e, 0, errors.New("bad device length")
	}
	e.Dev = string(v[k : k+int(n)])
	v = v[k+int(n):]
	if e.Seq, k = binary.Uvarint(v); k <= 0 {
		return e, 0, errors.New("bad seq")
	}
	v = v[k:]
	at, k := binary.Varint(v)
	if k <= 0 {
		return e, 0, errors.New("bad time")
	}
	e.Data = v[k:]
	return e, at, nil
}
