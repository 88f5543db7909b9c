// Package audit keeps the gateway's security events (docs/apps.md#security-events) in
// a hash-chained, append-only log on disk, so that an edited, removed,
// inserted or reordered entry is detected by [Verify] or by hand.
//
// # Format
//
// The log is a file of JSON lines, one entry per line, each ending in "\n":
//
//	{"n":N,"prev":"PREV","hash":"HASH","event":EVENT}
//
// with exactly these keys in this order and no spaces:
//
//   - N is the entry number, 1 for the first line, then 2, 3, ... (decimal).
//   - PREV is the HASH of the previous line; for the first line it is the
//     anchor, 64 zeros.
//   - EVENT is the [Event] encoded by Go's encoding/json (keys v, ts, gw,
//     dev when not empty, verdict, detail, remote, in that order; <, > and &
//     escaped as \u003c, \u003e, \u0026).
//   - HASH is the lowercase hex SHA-256 of the ASCII text below.
//
// The hashed text is the 64 hex characters of PREV immediately followed by
// the JSON object {"n":N,"event":EVENT}, where EVENT is copied byte for byte
// from the line:
//
//	PREV{"n":N,"event":EVENT}
//
// To re-check line 5 by hand with a POSIX shell:
//
//	line=$(sed -n 5p audit.log)
//	prev=$(printf '%s' "$line" | sed 's/^{"n":[0-9]*,"prev":"\([0-9a-f]*\)".*/\1/')
//	event=$(printf '%s' "$line" | sed 's/^.*"event"://; s/}$//')
//	printf '%s{"n":5,"event":%s}' "$prev" "$event" | sha256sum   # = the line's "hash"
//
// and check that its "prev" equals the "hash" of line 4. Removing whole lines
// at the end of the file leaves a valid, shorter chain: compare the count
// [Verify] returns (and the last hash) with a copy kept elsewhere, such as
// the security events the gateway publishes to the cloud.
//
// # Writing
//
// [Log.Append] never waits for the disk: it hands the event to a writer
// goroutine through a buffer of 4096 events and returns. The writer encodes
// and hashes the entry, writes it through a bufio.Writer, and flushes and
// fsyncs 200 ms after the first unsynced entry (so the timer costs at most
// five fsyncs a second), or at once on [Log.Sync] and [Log.Close]. If the buffer is full,
// because the disk stalls or an attacker floods the gateway with rejected
// messages, Append drops the event, counts it and returns [ErrOverflow]; the
// writer then records the loss in the chain itself as an event with verdict
// "overloaded" and detail "audit: N events dropped", so a gap is always
// visible in the log. Memory stays bounded and the message path never
// blocks.
//
// # Write errors
//
// A failed write or fsync (a full disk, say) does not stop the log. The
// writer cuts the file back to the end of the last entry it synced, so no
// partial line is left, counts the entries it could not keep as lost and
// reports the error through [Log.Err] until a write succeeds again. It
// retries every second, and with every new event. The first entry that
// reaches the disk afterwards is a gap record, hash-chained like any other:
// verdict "overloaded", detail "audit: N events lost (writes failing since
// TIME: ERROR)". [Check] lists gap records and drop records as gaps, so a
// log with missing events is never reported as complete.
//
// One Log must be the only writer of its file.
package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vitalgate/vitalgate/internal/fileerr"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// Event is a security event of docs/apps.md#security-events.
type Event = wire.Event

// Anchor is the prev of the first entry: 64 zeros.
const Anchor = "0000000000000000000000000000000000000000000000000000000000000000"

const (
	queueSize     = 4096
	syncInterval  = 200 * time.Millisecond
	retryInterval = time.Second // while writes fail
	bufferSize    = 64 << 10
	maxLine       = 1 << 20 // longer lines are refused by Verify and Open
)

// ErrOverflow is returned by [Log.Append] when the write buffer is full: the
// event was dropped, and the log records how many were.
var ErrOverflow = errors.New("audit: buffer full, event dropped")

// ErrClosed is returned by operations on a closed [Log].
var ErrClosed = errors.New("audit: log closed")

// LineError is the error of [Verify] and [Open] for a broken line.
type LineError struct {
	Path   string
	Line   int // 1-based line number
	Reason string
}

func (e *LineError) Error() string {
	return fmt.Sprintf("audit log %s: line %d: %s", e.Path, e.Line, e.Reason)
}

// file is what the log needs of its file; tests put a failing one in.
type file interface {
	io.Writer
	Sync() error
	Truncate(size int64) error
	Close() error
}

// item is an event or a sync request for the writer.
type item struct {
	e    Event
	sync chan error
}

// Log appends events to the chain. Its methods are safe for concurrent use.
type Log struct {
	path string
	f    file

	closeMu sync.RWMutex // Append and Sync send under the read lock; Close closes ch under the write lock
	closed  bool
	ch      chan item
	done    chan struct{}

	dropped     atomic.Uint64
	failing     atomic.Pointer[error] // the last write error, until a write succeeds
	writeErrors atomic.Uint64
	lostTotal   atomic.Uint64

	closeOnce sync.Once
	closeErr  error

	// Owned by the writer goroutine.
	bw     *bufio.Writer
	n      uint64
	prev   string
	lastGW string
	dirty  bool

	// What is on disk and synced: its size and its last entry.
	size     int64
	syncedN  uint64
	syncedAt string
	pending  int64  // bytes written to bw since then
	events   uint64 // events among them
	drops    uint64 // events dropped that their drop records count
	gap      bool   // the gap record is among them
	trunc    bool   // the file still has to be cut back to size

	lost      uint64 // events lost to write errors, not yet recorded
	lostSince time.Time
	lostWhy   string
}

// Open opens the log at path for appending, creating it if needed, and
// resumes the chain from its last line. It refuses a file whose last line is
// incomplete or broken: appending to it would hide the damage.
func Open(path string) (*Log, error) { return open(path, nil) }

// open is Open with the file wrapped by wrap, if not nil.
func open(path string, wrap func(*os.File) file) (*Log, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fileerr.Wrap("open audit log", path, err)
	}
	n, prev, size, err := resume(path, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	var lf file = f
	if wrap != nil {
		lf = wrap(f)
	}
	l := &Log{
		path:     path,
		f:        lf,
		ch:       make(chan item, queueSize),
		done:     make(chan struct{}),
		bw:       bufio.NewWriterSize(lf, bufferSize),
		n:        n,
		prev:     prev,
		size:     size,
		syncedN:  n,
		syncedAt: prev,
	}
	go l.run()
	return l, nil
}

// resume reads the last line of f and returns its number and hash, and the
// size of f.
func resume(path string, f *os.File) (n uint64, hash string, size int64, err error) {
	st, err := f.Stat()
	if err != nil {
		return 0, "", 0, fileerr.Wrap("open audit log", path, err)
	}
	size = st.Size()
	if size == 0 {
		return 0, Anchor, 0, nil
	}
	// Read backwards until the start of the last line.
	var tail []byte
	for off := size; ; {
		chunk := int64(4096)
		if chunk > off {
			chunk = off
		}
		off -= chunk
		buf := make([]byte, chunk)
		if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
			return 0, "", 0, fileerr.Wrap("open audit log", path, err)
		}
		tail = append(buf, tail...)
		if tail[len(tail)-1] != '\n' {
			return 0, "", 0, fmt.Errorf("audit log %s: the last line is incomplete (truncated tail); refusing to append to a broken chain", path)
		}
		if i := bytes.LastIndexByte(tail[:len(tail)-1], '\n'); i >= 0 {
			tail = tail[i+1:]
			break
		}
		if off == 0 {
			break
		}
		if int64(len(tail)) > maxLine {
			return 0, "", 0, fmt.Errorf("audit log %s: the last line is longer than %d bytes; refusing to append to a broken chain", path, maxLine)
		}
	}
	n, _, hash, _, err = parseLine(tail[:len(tail)-1])
	if err != nil {
		return 0, "", 0, fmt.Errorf("audit log %s: the last line is broken (%s); refusing to append to a broken chain", path, err)
	}
	return n, hash, size, nil
}

// Append queues e for the log and returns without waiting for the disk. It
// returns [ErrOverflow] if the buffer is full (the event is dropped and the
// drop recorded), or [ErrClosed] after Close. While writes fail (see
// [Log.Err]) events are still queued: each is written once the disk takes
// it again, or counted in the gap record.
func (l *Log) Append(e Event) error {
	l.closeMu.RLock()
	defer l.closeMu.RUnlock()
	if l.closed {
		return ErrClosed
	}
	select {
	case l.ch <- item{e: e}:
		return nil
	default:
		l.dropped.Add(1)
		return ErrOverflow
	}
}

// Sync writes every event appended before the call and fsyncs the file. It
// returns the write error if that failed (the events are then counted as
// lost, and recorded as a gap once writes succeed again).
func (l *Log) Sync() error {
	l.closeMu.RLock()
	if l.closed {
		l.closeMu.RUnlock()
		return ErrClosed
	}
	done := make(chan error, 1)
	l.ch <- item{sync: done}
	l.closeMu.RUnlock()
	return <-done
}

// Close writes and fsyncs the queued events and closes the file. It is safe
// to call more than once; later calls return the first call's result.
func (l *Log) Close() error {
	l.closeOnce.Do(func() {
		l.closeMu.Lock()
		l.closed = true
		close(l.ch)
		l.closeMu.Unlock()
		<-l.done
		err := l.Err()
		if cerr := l.f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close audit log: %w", cerr)
		}
		l.closeErr = err
	})
	return l.closeErr
}

// Err is the error of the last write or fsync if it failed and no write has
// succeeded since: while it is not nil, events are not being recorded.
func (l *Log) Err() error {
	if p := l.failing.Load(); p != nil {
		return *p
	}
	return nil
}

// WriteErrors is the number of writes and fsyncs that failed.
func (l *Log) WriteErrors() uint64 { return l.writeErrors.Load() }

// Lost is the number of events lost to write errors (each recorded in a gap
// record once writes succeed again).
func (l *Log) Lost() uint64 { return l.lostTotal.Load() }

// run is the writer goroutine.
func (l *Log) run() {
	defer close(l.done)
	timer := time.NewTimer(syncInterval)
	timer.Stop()
	armed := false
	for {
		select {
		case it, ok := <-l.ch:
			if !ok {
				l.noteLoss()
				l.flushSync()
				return
			}
			l.noteLoss()
			if it.sync != nil {
				it.sync <- l.flushSync()
				continue
			}
			l.write(it.e)
			if !armed {
				timer.Reset(syncInterval)
				armed = true
			}
		case <-timer.C:
			armed = false
			l.noteLoss()
			l.flushSync()
		}
		if !armed && (l.lost > 0 || l.failing.Load() != nil) {
			timer.Reset(retryInterval) // retry what failed even if no event comes
			armed = true
		}
	}
}

// noteLoss records dropped events, and events lost to write errors, in the
// chain.
func (l *Log) noteLoss() {
	if n := l.dropped.Swap(0); n > 0 {
		l.writeEntry(Event{V: 1, TS: time.Now().UnixMilli(), GW: l.lastGW, Verdict: "overloaded",
			Detail: fmt.Sprintf("audit: %d events dropped", n)}, n, false)
	}
	if l.lost > 0 && !l.gap {
		l.writeEntry(Event{V: 1, TS: time.Now().UnixMilli(), GW: l.lastGW, Verdict: "overloaded",
			Detail: fmt.Sprintf("audit: %d events lost (writes failing since %s: %s)",
				l.lost, l.lostSince.UTC().Format(time.RFC3339), l.lostWhy)}, 0, true)
	}
}

// write appends one event to the buffer.
func (l *Log) write(e Event) {
	if e.GW != "" {
		l.lastGW = e.GW
	}
	l.writeEntry(e, 0, false)
}

// writeEntry appends one entry to the buffer. drops is the count a drop
// record carries; gap marks the gap record.
func (l *Log) writeEntry(e Event, drops uint64, gap bool) {
	switch {
	case drops > 0:
		l.drops += drops
	case gap:
		l.gap = true
	default:
		l.events++
	}
	if l.trunc {
		if err := l.f.Truncate(l.size); err != nil {
			l.failed(fmt.Errorf("audit log %s: cut back to the last synced entry: %w", l.path, err))
			return
		}
		l.trunc = false
	}
	line, hash, err := encodeLine(l.n+1, l.prev, e)
	if err != nil {
		l.failed(fmt.Errorf("audit log %s: encode event: %w", l.path, err))
		return
	}
	if _, err := l.bw.Write(line); err != nil {
		l.failed(fileerr.Wrap("write audit log", l.path, err))
		return
	}
	l.pending += int64(len(line))
	l.n++
	l.prev = hash
	l.dirty = true
}

func (l *Log) flushSync() error {
	if !l.dirty {
		return l.Err()
	}
	if err := l.bw.Flush(); err != nil {
		return l.failed(fileerr.Wrap("write audit log", l.path, err))
	}
	if err := l.f.Sync(); err != nil {
		return l.failed(fileerr.Wrap("sync audit log", l.path, err))
	}
	l.size += l.pending
	l.syncedN, l.syncedAt = l.n, l.prev
	l.pending, l.events, l.drops, l.dirty = 0, 0, 0, false
	if l.gap {
		l.gap, l.lost, l.lostWhy = false, 0, ""
	}
	l.failing.Store(nil)
	return nil
}

// failed handles a failed write or fsync: what was written since the last
// sync is cut off the file (it may hold a partial line, and after a failed
// fsync nothing says what reached the disk), its events are counted as
// lost and its drop counts are carried over, and the chain continues from
// the last synced entry. It returns err.
func (l *Log) failed(err error) error {
	l.writeErrors.Add(1)
	if l.lost == 0 && !l.gap {
		l.lostSince = time.Now()
	}
	if l.lostWhy == "" {
		l.lostWhy = fileerr.Cause(err)
	}
	l.lost += l.events
	l.lostTotal.Add(l.events)
	l.dropped.Add(l.drops)
	l.n, l.prev = l.syncedN, l.syncedAt
	l.pending, l.events, l.drops, l.gap, l.dirty = 0, 0, 0, false, false
	l.bw.Reset(l.f)
	if terr := l.f.Truncate(l.size); terr != nil {
		l.trunc = true // retried before the next entry
	}
	l.failing.Store(&err)
	return err
}

// encodeLine returns the line (with its newline) of entry n and its hash.
func encodeLine(n uint64, prev string, e Event) ([]byte, string, error) {
	ev, err := json.Marshal(e)
	if err != nil {
		return nil, "", err
	}
	hash := entryHash(n, prev, ev)
	return buildLine(n, prev, hash, ev), hash, nil
}

// entryHash is the rule of the package doc: SHA-256 of PREV{"n":N,"event":EVENT}.
func entryHash(n uint64, prev string, ev []byte) string {
	h := sha256.New()
	h.Write([]byte(prev))
	h.Write([]byte(`{"n":`))
	h.Write(strconv.AppendUint(nil, n, 10))
	h.Write([]byte(`,"event":`))
	h.Write(ev)
	h.Write([]byte(`}`))
	return hex.EncodeToString(h.Sum(nil))
}

func buildLine(n uint64, prev, hash string, ev []byte) []byte {
	b := make([]byte, 0, 160+len(ev))
	b = append(b, `{"n":`...)
	b = strconv.AppendUint(b, n, 10)
	b = append(b, `,"prev":"`...)
	b = append(b, prev...)
	b = append(b, `","hash":"`...)
	b = append(b, hash...)
	b = append(b, `","event":`...)
	b = append(b, ev...)
	return append(b, "}\n"...)
}

// parseLine checks one line (without its newline) on its own: canonical
// form and hash. It returns the entry number, prev, hash and event.
func parseLine(line []byte) (n uint64, prev, hash string, e Event, err error) {
	var raw struct {
		N     *uint64         `json:"n"`
		Prev  string          `json:"prev"`
		Hash  string          `json:"hash"`
		Event json.RawMessage `json:"event"`
	}
	d := json.NewDecoder(bytes.NewReader(line))
	d.DisallowUnknownFields()
	if err := d.Decode(&raw); err != nil {
		return 0, "", "", Event{}, fmt.Errorf("not a valid entry: %v", err)
	}
	if raw.N == nil || raw.Event == nil || !isHash(raw.Prev) || !isHash(raw.Hash) {
		return 0, "", "", Event{}, errors.New("not a valid entry: missing n, event, prev or hash")
	}
	d = json.NewDecoder(bytes.NewReader(raw.Event))
	d.DisallowUnknownFields()
	if err := d.Decode(&e); err != nil {
		return 0, "", "", Event{}, fmt.Errorf("not a valid event: %v", err)
	}
	ev, err := json.Marshal(e)
	if err != nil {
		return 0, "", "", Event{}, fmt.Errorf("not a valid event: %v", err)
	}
	want := buildLine(*raw.N, raw.Prev, raw.Hash, ev)
	if !bytes.Equal(want[:len(want)-1], line) {
		return 0, "", "", Event{}, errors.New("not in canonical form (edited)")
	}
	if entryHash(*raw.N, raw.Prev, ev) != raw.Hash {
		return 0, "", "", Event{}, errors.New("hash does not match the entry (edited)")
	}
	return *raw.N, raw.Prev, raw.Hash, e, nil
}

func isHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	return strings.Trim(s, "0123456789abcdef") == ""
}
