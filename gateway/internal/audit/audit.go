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
)

// Event is a security event of docs/apps.md#security-events.
type Event struct {
	V       int    `json:"v" cbor:"v"`
	TS      int64  `json:"ts" cbor:"ts"`
	GW      string `json:"gw" cbor:"gw"`
	Dev     string `json:"dev,omitempty" cbor:"dev,omitempty"`
	Verdict string `json:"verdict" cbor:"verdict"`
	Detail  string `json:"detail" cbor:"detail"`
	Remote  string `json:"remote" cbor:"remote"`
}

// Anchor is the prev of the first entry: 64 zeros.
const Anchor = "0000000000000000000000000000000000000000000000000000000000000000"

const (
	queueSize    = 4096
	syncInterval = 200 * time.Millisecond
	bufferSize   = 64 << 10
	maxLine      = 1 << 20 // longer lines are refused by Verify and Open
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

// item is an event or a sync request for the writer.
type item struct {
	e    Event
	sync chan error
}

// Log appends events to the chain. Its methods are safe for concurrent use.
type Log struct {
	path string
	f    *os.File

	closeMu sync.RWMutex // Append and Sync send under the read lock; Close closes ch under the write lock
	closed  bool
	ch      chan item
	done    chan struct{}

	dropped atomic.Uint64
	failed  atomic.Pointer[error] // first write error, sticky

	closeOnce sync.Once
	closeErr  error

	// Owned by the writer goroutine.
	bw     *bufio.Writer
	n      uint64
	prev   string
	lastGW string
	dirty  bool
}

// Open opens the log at path for appending, creating it if needed, and
// resumes the chain from its last line. It refuses a file whose last line is
// incomplete or broken: appending to it would hide the damage.
func Open(path string) (*Log, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	n, prev, err := resume(path, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	l := &Log{
		path: path,
		f:    f,
		ch:   make(chan item, queueSize),
		done: make(chan struct{}),
		bw:   bufio.NewWriterSize(f, bufferSize),
		n:    n,
		prev: prev,
	}
	go l.run()
	return l, nil
}

// resume reads the last line of f and returns its number and hash.
func resume(path string, f *os.File) (uint64, string, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, "", fmt.Errorf("open audit log: %w", err)
	}
	size := st.Size()
	if size == 0 {
		return 0, Anchor, nil
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
			return 0, "", fmt.Errorf("open audit log: read %s: %w", path, err)
		}
		tail = append(buf, tail...)
		if tail[len(tail)-1] != '\n' {
			return 0, "", fmt.Errorf("audit log %s: the last line is incomplete (truncated tail); refusing to append to a broken chain", path)
		}
		if i := bytes.LastIndexByte(tail[:len(tail)-1], '\n'); i >= 0 {
			tail = tail[i+1:]
			break
		}
		if off == 0 {
			break
		}
		if int64(len(tail)) > maxLine {
			return 0, "", fmt.Errorf("audit log %s: the last line is longer than %d bytes; refusing to append to a broken chain", path, maxLine)
		}
	}
	n, _, hash, err := parseLine(tail[:len(tail)-1])
	if err != nil {
		return 0, "", fmt.Errorf("audit log %s: the last line is broken (%s); refusing to append to a broken chain", path, err)
	}
	return n, hash, nil
}

// Append queues e for the log and returns without waiting for the disk. It
// returns [ErrOverflow] if the buffer is full (the event is dropped and the
// drop recorded), [ErrClosed] after Close, or the writer's first I/O error.
func (l *Log) Append(e Event) error {
	if p := l.failed.Load(); p != nil {
		return *p
	}
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

// Sync writes every event appended before the call and fsyncs the file.
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
		err := l.err()
		if cerr := l.f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close audit log: %w", cerr)
		}
		l.closeErr = err
	})
	return l.closeErr
}

func (l *Log) err() error {
	if p := l.failed.Load(); p != nil {
		return *p
	}
	return nil
}

func (l *Log) fail(err error) {
	l.failed.CompareAndSwap(nil, &err)
}

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
				l.noteDropped()
				l.flushSync()
				return
			}
			if it.sync != nil {
				l.noteDropped()
				it.sync <- l.flushSync()
				continue
			}
			l.noteDropped()
			l.write(it.e)
			if !armed {
				timer.Reset(syncInterval)
				armed = true
			}
		case <-timer.C:
			armed = false
			l.flushSync()
		}
	}
}

// noteDropped records dropped events in the chain.
func (l *Log) noteDropped() {
	if n := l.dropped.Swap(0); n > 0 {
		l.write(Event{V: 1, TS: time.Now().UnixMilli(), GW: l.lastGW, Verdict: "overloaded",
			Detail: fmt.Sprintf("audit: %d events dropped", n)})
	}
}

// write appends one entry to the buffer.
func (l *Log) write(e Event) {
	if l.err() != nil {
		return
	}
	if e.GW != "" {
		l.lastGW = e.GW
	}
	line, hash, err := encodeLine(l.n+1, l.prev, e)
	if err != nil {
		l.fail(fmt.Errorf("audit log %s: encode event: %w", l.path, err))
		return
	}
	if _, err := l.bw.Write(line); err != nil {
		l.fail(fmt.Errorf("audit log %s: write: %w", l.path, err))
		return
	}
	l.n++
	l.prev = hash
	l.dirty = true
}

func (l *Log) flushSync() error {
	if err := l.err(); err != nil {
		return err
	}
	if !l.dirty {
		return nil
	}
	if err := l.bw.Flush(); err != nil {
		l.fail(fmt.Errorf("audit log %s: write: %w", l.path, err))
		return l.err()
	}
	if err := l.f.Sync(); err != nil {
		l.fail(fmt.Errorf("audit log %s: sync: %w", l.path, err))
		return l.err()
	}
	l.dirty = false
	return nil
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
// form and hash. It returns the entry number, prev and hash.
func parseLine(line []byte) (n uint64, prev, hash string, err error) {
	var raw struct {
		N     *uint64         `json:"n"`
		Prev  string          `json:"prev"`
		Hash  string          `json:"hash"`
		Event json.RawMessage `json:"event"`
	}
	d := json.NewDecoder(bytes.NewReader(line))
	d.DisallowUnknownFields()
	if err := d.Decode(&raw); err != nil {
		return 0, "", "", fmt.Errorf("not a valid entry: %v", err)
	}
	if raw.N == nil || raw.Event == nil || !isHash(raw.Prev) || !isHash(raw.Hash) {
		return 0, "", "", errors.New("not a valid entry: missing n, event, prev or hash")
	}
	var e Event
	d = json.NewDecoder(bytes.NewReader(raw.Event))
	d.DisallowUnknownFields()
	if err := d.Decode(&e); err != nil {
		return 0, "", "", fmt.Errorf("not a valid event: %v", err)
	}
	ev, err := json.Marshal(e)
	if err != nil {
		return 0, "", "", fmt.Errorf("not a valid event: %v", err)
	}
	want := buildLine(*raw.N, raw.Prev, raw.Hash, ev)
	if !bytes.Equal(want[:len(want)-1], line) {
		return 0, "", "", errors.New("not in canonical form (edited)")
	}
	if entryHash(*raw.N, raw.Prev, ev) != raw.Hash {
		return 0, "", "", errors.New("hash does not match the entry (edited)")
	}
	return *raw.N, raw.Prev, raw.Hash, nil
}

func isHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	return strings.Trim(s, "0123456789abcdef") == ""
}

// Verify checks the whole chain at path. It returns the number of entries
// that verified, and for the first broken line a [*LineError] saying which
// line and why: edited (bad hash or not canonical), removed, inserted or
// reordered (wrong number or prev), or truncated (no final newline). Whole
// lines removed from the end cannot be seen from the file alone: compare n
// with a count kept elsewhere.
func Verify(path string) (n int, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("verify audit log: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 64<<10)
	prev := Anchor
	for line := 1; ; line++ {
		b, err := readLine(r)
		if err == io.EOF {
			return n, nil
		}
		bad := func(format string, args ...any) (int, error) {
			return n, &LineError{Path: path, Line: line, Reason: fmt.Sprintf(format, args...)}
		}
		switch {
		case errors.Is(err, errTruncated):
			return bad("incomplete line at the end of the file (truncated)")
		case errors.Is(err, errTooLong):
			return bad("longer than %d bytes", maxLine)
		case err != nil:
			return n, fmt.Errorf("verify audit log %s: %w", path, err)
		}
		num, p, hash, err := parseLine(b)
		if err != nil {
			return bad("%v", err)
		}
		if num != uint64(line) {
			return bad("entry number %d where %d was expected (lines removed, inserted or reordered)", num, line)
		}
		if p != prev {
			if line == 1 {
				return bad("prev is not the anchor of 64 zeros (lines removed at the start)")
			}
			return bad("prev does not match the hash of line %d (lines removed, inserted or reordered)", line-1)
		}
		prev = hash
		n++
	}
}

var (
	errTruncated = errors.New("truncated line")
	errTooLong   = errors.New("line too long")
)

// readLine returns the next line without its newline, io.EOF at the end,
// errTruncated for a last line without newline, errTooLong past maxLine.
func readLine(r *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(buf)+len(chunk) > maxLine+1 {
			return nil, errTooLong
		}
		buf = append(buf, chunk...)
		switch {
		case err == nil:
			return buf[:len(buf)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF:
			if len(buf) == 0 {
				return nil, io.EOF
			}
			return nil, errTruncated
		default:
			return nil, err
		}
	}
}
