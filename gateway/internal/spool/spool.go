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
// The replay rule is applied in the committer, against the durable last seq
// of each device and against earlier requests of the same batch: a refused
// request alone gets its [Outcome], the others in the batch commit.
//
// # Replay
//
// The replay rule (judge, in replay.go, its one place) gives each record an
// [Outcome]: a seq at or below the device's last accepted one is a
// [Replay], unless it is the last one with the same mark ([Duplicate]: the
// record is already stored); one more than [Options.MaxSeqJump] past it
// (or, for a device's first record, past 0) is a [SeqJump], so one record
// cannot use up a device's seq space. [Queue.AppendMarked] returns the
// outcome and [Queue.Judge] tells it without appending; what a refusal
// means to a device (verdict, detail) is the caller's. [Queue.Forget]
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
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

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

// ErrFull is returned by [Queue.Append] when the queue holds MaxRecords
// records or MaxBytes bytes of data (counting appends still waiting for
// their commit). Nothing was written; the gateway answers `overloaded` and
// the device keeps its message.
var ErrFull = errors.New("spool: queue full")

// ErrClosed is returned by operations on a closed [Queue].
var ErrClosed = errors.New("spool: queue closed")

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
	// transaction took (its page writes and fdatasyncs, not the delay),
	// before the requests are answered; it must not wait for them.
	OnCommit func(requests int, took time.Duration)
	// MaxSeqJump bounds how far a device's seq may advance past its last
	// accepted one, and a device's first seq (counted from 0): a record
	// beyond it is refused ([SeqJump]), so that no single
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
			return fmt.Errorf("open queue %s: %w", path, ErrInUse)
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
// unless [Options.NoSync]). It fails with a [*RefusedError] if the replay
// rule refuses seq (judged against the device's last accepted seq,
// including appends committed in the same batch), with [ErrFull] at the
// queue's bound, and with [ErrClosed] after Close. The queue keeps data
// (Peek may return it): the caller must not modify it afterwards.
func (q *Queue) Append(dev string, seq uint64, data []byte) error {
	res, err := q.AppendMarked(dev, seq, nil, data)
	if err == nil && res.Outcome != Accepted {
		return &RefusedError{Dev: dev, Seq: seq, Result: res}
	}
	return err
}

// AppendMarked is [Queue.Append] that also stores mark (at most 64 bytes,
// e.g. a digest of the device's message) with the device's last seq, in the
// same transaction; [Queue.Last] returns it, across restarts, and the
// replay rule compares it (see [Duplicate]). It returns the replay rule's
// judgement: the record was stored if and only if its Outcome is
// [Accepted]. The error, if any, is why it was not judged: [ErrFull],
// [ErrClosed], a bad argument or a failed commit.
func (q *Queue) AppendMarked(dev string, seq uint64, mark, data []byte) (Result, error) {
	if len(mark) > maxMarkLen {
		return Result{}, fmt.Errorf("spool: mark of %d bytes, limit %d", len(mark), maxMarkLen)
	}
	if dev == "" || len(dev) > maxDevLen {
		return Result{}, fmt.Errorf("spool: device ID of %d bytes, want 1 to %d", len(dev), maxDevLen)
	}
	size := int64(len(data))
	q.mu.Lock()
	// Judged against the committed state first, so that a refused record
	// neither counts against the bounds nor waits for a commit.
	last, ok := q.last[dev]
	if res := judge(seq, mark, last, q.marks[dev], ok, q.maxJump); res.Outcome != Accepted {
		q.mu.Unlock()
		return res, nil
	}
	if q.count+q.resCount >= q.maxRecs || q.bytes+q.resBytes+size > q.maxBytes {
		q.mu.Unlock()
		return Result{}, ErrFull
	}
	q.resCount++
	q.resBytes += size
	q.mu.Unlock()

	r := requestPool.Get().(*request)
	r.dev, r.seq, r.mark, r.data, r.size, r.keys, r.key, r.res = dev, seq, mark, data, size, nil, 0, Result{}
	r.at = time.Now().UnixMilli()
	r.value = encodeValue(r.value[:0], dev, seq, r.at, data)
	err := q.submit(r)
	if errors.Is(err, ErrClosed) {
		q.mu.Lock()
		q.resCount--
		q.resBytes -= size
		q.mu.Unlock()
	}
	res := r.res
	if err != nil {
		res = Result{}
	}
	r.value, r.mark, r.data = r.value[:0], nil, nil
	if cap(r.value) > 64<<10 {
		r.value = nil // do not pool large buffers
	}
	requestPool.Put(r)
	return res, err
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

// Commits returns the number of write transactions so far (each one
// fdatasyncs twice).
func (q *Queue) Commits() uint64 { return q.commits.Load() }
