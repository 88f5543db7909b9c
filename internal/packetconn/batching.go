package packetconn

import (
	"context"
	"crypto/tls"
	"net"
	"net/url"
	"sync"
	"time"
)

// maxPending bounds the bytes a [Batching] holds that are not written yet,
// queued or in the flush in progress; a Write beyond it waits until the
// flusher has written enough (one Write of any size is let in when nothing is
// held). 512 KiB is what a queue of 256 KiB beside a flush of as much held
// before flushes were chunked.
const maxPending = 512 << 10

// closeGrace bounds how long Close waits for the last flush.
const closeGrace = time.Second

// flushChunk is the most one write of a flush carries, under one write
// deadline. A flush of maxPending bytes under one deadline would cut off a
// link slower than maxPending per timeout (26 KiB/s with the relay's 10 s)
// although it moves, and a writer waiting for room would wait for all of it;
// in chunks, the deadline bounds the time without progress, and room frees
// chunk by chunk (a caller's own deadline, such as paho's per packet, still
// caps it). On a *tls.Conn, which writes records of at most 16 KiB with one
// system call each, chunks add no system calls; on plain TCP, one per chunk.
// A variable for tests.
var flushChunk = 32 << 10

// Batching is a net.Conn whose writes are queued and written by a flusher
// goroutine: packets written while the flusher is in a write go out together,
// in one write (one TLS record and one system call on a *tls.Conn). For a
// sender of many small packets, such as the gateway's relay with hundreds of
// QoS 1 publishes in flight or a broker's PUBACKs to it, that replaces one
// system call per packet with one per batch; a lone packet is written at
// once, with one goroutine hand-off of delay.
//
// Write returns as soon as its bytes are queued, so a write error shows on
// a later Write (and on Close). When a flush fails the connection is closed,
// so the reader sees the loss at once. Each flush has its own write deadline
// of the timeout given to [NewBatching], renewed for every 32 KiB of it (so
// it bounds the time without progress, not the time of a large flush on a
// slow link), never later than a deadline set with SetWriteDeadline or
// SetDeadline.
type Batching struct {
	net.Conn
	timeout time.Duration

	mu        sync.Mutex
	cond      sync.Cond // buf gained data, the flusher took buf, or the state changed
	buf       []byte    // queued bytes
	spare     []byte    // the flusher's previous buffer, reused
	err       error     // first write error
	closed    bool
	closeBy   time.Time     // set by Close: no write runs past it
	flushing  bool          // the flusher is in a write
	unwritten int           // bytes of the flush in progress not written yet
	waiting   int           // writers waiting for room
	limit     time.Time     // SetWriteDeadline's: no flush runs past it (zero: none)
	done      chan struct{} // closed when the flusher has exited
}

// NewBatching wraps c and starts its flusher. timeout bounds each flush
// (0: no deadline).
func NewBatching(c net.Conn, timeout time.Duration) *Batching {
	b := &Batching{Conn: c, timeout: timeout, done: make(chan struct{})}
	b.cond.L = &b.mu
	go b.flush()
	return b
}

// Write queues p. It blocks only while maxPending bytes are held already.
func (b *Batching) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.err == nil && !b.closed && b.held() > 0 && b.held()+len(p) > maxPending {
		b.waiting++
		b.cond.Wait()
		b.waiting--
	}
	switch {
	case b.err != nil:
		return 0, b.err
	case b.closed:
		return 0, net.ErrClosed
	}
	if len(b.buf) == 0 {
		b.cond.Broadcast()
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

// flush is the flusher goroutine.
func (b *Batching) flush() {
	defer close(b.done)
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		for len(b.buf) == 0 && !b.closed && b.err == nil {
			b.cond.Wait()
		}
		if len(b.buf) == 0 || b.err != nil {
			return
		}
		out := b.buf
		b.buf, b.spare = b.spare[:0], nil
		b.flushing = true
		var err error
		for rest := out; len(rest) > 0 && err == nil; {
			n := min(len(rest), flushChunk)
			b.unwritten = len(rest)
			// Set under mu, so that a later Close or SetWriteDeadline,
			// which also set it under mu, overrides it rather than the
			// reverse.
			_ = b.Conn.SetWriteDeadline(b.deadline())
			b.mu.Unlock()
			_, err = b.Conn.Write(rest[:n])
			b.mu.Lock()
			rest = rest[n:]
			b.unwritten = len(rest)
			if b.waiting > 0 {
				b.cond.Broadcast() // room for writers waiting on maxPending
			}
		}
		if err != nil {
			_ = b.Conn.Close()
		}
		b.flushing, b.unwritten = false, 0
		if err != nil {
			b.err = err
			b.cond.Broadcast()
		}
		if cap(out) <= 2*maxPending {
			b.spare = out
		}
	}
}

// held is the number of bytes not written yet. Called with mu held.
func (b *Batching) held() int { return len(b.buf) + b.unwritten }

// deadline is the write deadline of a flush starting now. Called with mu held.
func (b *Batching) deadline() time.Time {
	var d time.Time
	switch {
	case b.closed:
		d = b.closeBy // not renewed per chunk: Close waits closeGrace in all
	case b.timeout > 0:
		d = time.Now().Add(b.timeout)
	}
	if !b.limit.IsZero() && (d.IsZero() || b.limit.Before(d)) {
		d = b.limit
	}
	return d
}

// Close writes what is queued (waiting at most a second for it), then
// closes the connection.
func (b *Batching) Close() error {
	b.mu.Lock()
	already := b.closed
	if !already {
		b.closed, b.closeBy = true, time.Now().Add(closeGrace)
	}
	if !already && b.flushing {
		_ = b.Conn.SetWriteDeadline(b.deadline()) // bounds the flush in progress
	}
	b.cond.Broadcast()
	b.mu.Unlock()
	if already {
		return net.ErrClosed
	}
	<-b.done
	return b.Conn.Close()
}

// WriteErr is the write error that closed the connection, if one did (a
// flush that made no progress within the timeout, for one).
func (b *Batching) WriteErr() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// ConnectionState is the TLS state of the wrapped connection, the zero value
// if it is not a TLS connection.
func (b *Batching) ConnectionState() tls.ConnectionState {
	if tc, ok := b.Conn.(interface{ ConnectionState() tls.ConnectionState }); ok {
		return tc.ConnectionState()
	}
	return tls.ConnectionState{}
}

// SetWriteDeadline sets a limit that no flush runs past, the one in
// progress included (a zero t removes it). Each flush otherwise has its own
// deadline, the timeout given to [NewBatching]. Callers that set a deadline
// around every packet (paho, mochi) cost no timer update unless a flush is
// in progress: the next flush applies the limit when it starts.
func (b *Batching) SetWriteDeadline(t time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.limit = t
	if !b.flushing {
		return nil
	}
	return b.Conn.SetWriteDeadline(b.deadline())
}

// SetDeadline sets the read deadline and the write limit of [Batching.SetWriteDeadline].
func (b *Batching) SetDeadline(t time.Time) error {
	if err := b.Conn.SetReadDeadline(t); err != nil {
		return err
	}
	return b.SetWriteDeadline(t)
}

// DialBatching connects to uri's host, over TLS with tc when its scheme is
// "ssl" (plain TCP otherwise), through d and within ctx, and wraps the
// connection in a [Batching] whose flushes are bounded by writeTimeout. It
// suits paho.mqtt.golang's custom open-connection function for clients that
// keep many packets in flight (the gateway's relay, an app).
func DialBatching(ctx context.Context, d *net.Dialer, uri *url.URL, tc *tls.Config, writeTimeout time.Duration) (net.Conn, error) {
	var c net.Conn
	var err error
	if uri.Scheme == "ssl" {
		c, err = (&tls.Dialer{NetDialer: d, Config: tc}).DialContext(ctx, "tcp", uri.Host)
	} else {
		c, err = d.DialContext(ctx, "tcp", uri.Host)
	}
	if err != nil {
		return nil, err
	}
	return NewBatching(c, writeTimeout), nil
}
