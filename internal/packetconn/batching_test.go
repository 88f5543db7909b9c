package packetconn

import (
	"bytes"
	"errors"
	"net"
	"testing"
	"time"
)

// gated is a [recorder] whose Writes first wait for a value on gate, and
// which records the write deadline.
type gated struct {
	*recorder
	gate     chan struct{}
	entered  chan struct{} // a Write has started (buffered)
	deadline time.Time
}

func newGated() *gated {
	return &gated{recorder: &recorder{}, gate: make(chan struct{}), entered: make(chan struct{}, 100)}
}

func (g *gated) Write(b []byte) (int, error) {
	g.entered <- struct{}{}
	<-g.gate
	return g.recorder.Write(b)
}

func (g *gated) SetWriteDeadline(t time.Time) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.deadline = t
	return nil
}

func (g *gated) got() ([][]byte, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.writes, g.closed
}

func mustWrite(t *testing.T, c net.Conn, s string) {
	t.Helper()
	if _, err := c.Write([]byte(s)); err != nil {
		t.Fatalf("write %q: %v", s, err)
	}
}

// Packets written while a flush is in progress go out together, in order.
func TestBatchingCoalescesWhileAWriteIsInProgress(t *testing.T) {
	g := newGated()
	b := NewBatching(g, time.Minute)
	mustWrite(t, b, "A")
	<-g.entered // the flusher is inside the write of A
	mustWrite(t, b, "B")
	mustWrite(t, b, "C")
	mustWrite(t, b, "D")
	g.gate <- struct{}{} // A done
	<-g.entered
	g.gate <- struct{}{} // BCD done
	close(g.gate)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	writes, closed := g.got()
	if len(writes) != 2 || string(writes[0]) != "A" || string(writes[1]) != "BCD" {
		t.Fatalf("writes %q, want [A BCD]", writes)
	}
	if !closed {
		t.Fatal("underlying connection not closed")
	}
	g.mu.Lock()
	dl := g.deadline
	g.mu.Unlock()
	if dl.IsZero() {
		t.Fatal("flush had no write deadline")
	}
}

// Close writes what is still queued before closing.
func TestBatchingCloseFlushes(t *testing.T) {
	g := newGated()
	close(g.gate)
	b := NewBatching(g, 0)
	var want []byte
	for i := range 100 {
		p := bytes.Repeat([]byte{byte(i)}, 1+i)
		want = append(want, p...)
		if _, err := b.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	writes, closed := g.got()
	if got := bytes.Join(writes, nil); !bytes.Equal(got, want) || !closed {
		t.Fatalf("wrote %d bytes (closed %v), want %d in order", len(got), closed, len(want))
	}
	if _, err := b.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v, want net.ErrClosed", err)
	}
}

// A failed flush closes the connection and fails the next Write.
func TestBatchingWriteFailure(t *testing.T) {
	g := newGated()
	boom := errors.New("connection reset")
	g.fail = boom
	close(g.gate)
	b := NewBatching(g, time.Minute)
	mustWrite(t, b, "lost") // queued: the failure comes later
	<-b.done                // the flusher stops at the failure
	if _, closed := g.got(); !closed {
		t.Fatal("connection not closed after a failed flush")
	}
	if _, err := b.Write([]byte("next")); !errors.Is(err, boom) {
		t.Fatalf("next write: %v, want %v", err, boom)
	}
}

// While a flush hangs, a writer waits once maxPending bytes are queued
// rather than growing the buffer.
func TestBatchingBoundsQueuedBytes(t *testing.T) {
	g := newGated()
	b := NewBatching(g, time.Minute)
	mustWrite(t, b, "first")
	<-g.entered // flusher blocked inside the first write
	chunk := make([]byte, 32<<10)
	wrote := make(chan int)
	go func() {
		n := 0
		for range 3 * maxPending / len(chunk) {
			if _, err := b.Write(chunk); err != nil {
				break
			}
			n++
		}
		wrote <- n
	}()
	// The writer fills the buffer up to the bound (counting the flush in
	// progress) and waits there.
	for {
		b.mu.Lock()
		queued := b.held()
		b.mu.Unlock()
		if queued > maxPending {
			t.Fatalf("%d bytes held, bound %d", queued, maxPending)
		}
		if queued+len(chunk) > maxPending {
			break
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case n := <-wrote:
		t.Fatalf("all %d writes returned while the flush hung", n)
	default:
	}
	close(g.gate) // the flush completes; the rest follows
	if n := <-wrote; n != 3*maxPending/len(chunk) {
		t.Fatalf("%d writes", n)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	writes, _ := g.got()
	if total := len(bytes.Join(writes, nil)); total != len("first")+3*maxPending {
		t.Fatalf("%d bytes written", total)
	}
}

// SetWriteDeadline caps every flush, the one in progress included, and
// Close caps the last ones at a second; a second Close reports it.
func TestBatchingDeadlines(t *testing.T) {
	g := newGated()
	b := NewBatching(g, time.Hour)
	limit := time.Now().Add(time.Minute)
	if err := b.SetWriteDeadline(limit); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, b, "A")
	<-g.entered
	g.mu.Lock()
	dl := g.deadline
	g.mu.Unlock()
	if !dl.Equal(limit) {
		t.Fatalf("flush deadline %v, want the limit %v", dl, limit)
	}
	if err := b.SetWriteDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	dl = g.deadline
	g.mu.Unlock()
	if d := time.Until(dl); d < 59*time.Minute {
		t.Fatalf("limit removed but the deadline is %v away, want the hour of the timeout", d)
	}
	closed := make(chan error)
	go func() { closed <- b.Close() }()
	for {
		g.mu.Lock()
		d := time.Until(g.deadline)
		g.mu.Unlock()
		if d <= closeGrace {
			break // Close capped the flush in progress
		}
		time.Sleep(time.Millisecond)
	}
	close(g.gate)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v, want net.ErrClosed", err)
	}
}

// A large flush is written in chunks, each under a deadline of its own, so
// the timeout bounds the time without progress: a slow link that moves is
// not cut off by a flush that takes longer than the timeout in all.
func TestBatchingDeadlinePerChunk(t *testing.T) {
	defer func(n int) { flushChunk = n }(flushChunk)
	flushChunk = 1 << 10
	g := newGated()
	b := NewBatching(g, time.Hour)
	mustWrite(t, b, "A")
	<-g.entered // the flusher is inside the write of A: the next write is one flush
	mustWrite(t, b, string(bytes.Repeat([]byte("x"), 3*1024+10)))
	g.gate <- struct{}{}
	var deadlines []time.Time
	for range 4 {
		<-g.entered
		g.mu.Lock()
		deadlines = append(deadlines, g.deadline)
		g.mu.Unlock()
		time.Sleep(2 * time.Millisecond) // the next chunk's deadline is later
		g.gate <- struct{}{}
	}
	close(g.gate)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	writes, _ := g.got()
	sizes := []int{}
	for _, w := range writes {
		sizes = append(sizes, len(w))
	}
	if len(sizes) != 5 || sizes[1] != 1024 || sizes[2] != 1024 || sizes[3] != 1024 || sizes[4] != 10 {
		t.Fatalf("writes of %v bytes, want 1, then 1024, 1024, 1024, 10", sizes)
	}
	for i := 1; i < len(deadlines); i++ {
		if !deadlines[i].After(deadlines[i-1]) {
			t.Fatalf("chunk %d's deadline %v is not after chunk %d's %v", i, deadlines[i], i-1, deadlines[i-1])
		}
	}
}

// Close bounds the whole remaining flush by closeGrace, not each chunk.
func TestBatchingCloseDeadlineNotRenewed(t *testing.T) {
	defer func(n int) { flushChunk = n }(flushChunk)
	flushChunk = 1 << 10
	g := newGated()
	b := NewBatching(g, time.Hour)
	mustWrite(t, b, string(bytes.Repeat([]byte("x"), 3*1024)))
	<-g.entered // chunk 1
	closed := make(chan error)
	go func() { closed <- b.Close() }()
	deadline := func() time.Time {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.deadline
	}
	for time.Until(deadline()) > closeGrace {
		time.Sleep(time.Millisecond) // until Close has capped chunk 1
	}
	byClose := deadline()
	for chunk := 2; chunk <= 3; chunk++ {
		time.Sleep(2 * time.Millisecond) // a renewed deadline would be later
		g.gate <- struct{}{}
		<-g.entered
		if d := deadline(); !d.Equal(byClose) {
			t.Fatalf("chunk %d after Close has deadline %v, want Close's %v", chunk, d, byClose)
		}
	}
	close(g.gate)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}

// A writer waiting for room is let in as soon as the flush in progress has
// written enough of its chunks, not after all of it: on a slow link the wait
// (paho's hand-off, bounded by its write timeout) follows the progress.
func TestBatchingRoomFreesChunkByChunk(t *testing.T) {
	defer func(n int) { flushChunk = n }(flushChunk)
	flushChunk = 8 << 10
	g := newGated()
	b := NewBatching(g, time.Hour)
	defer func() {
		close(g.gate)
		b.Close()
	}()
	mustWrite(t, b, string(bytes.Repeat([]byte("a"), 32<<10)))
	<-g.entered // chunk 1 of 4 in progress (the rest: 33 chunks, within entered's buffer)
	mustWrite(t, b, string(bytes.Repeat([]byte("b"), maxPending-32<<10)))
	admitted := make(chan error)
	go func() {
		_, err := b.Write(bytes.Repeat([]byte("c"), 8<<10))
		admitted <- err
	}()
	select {
	case err := <-admitted:
		t.Fatalf("a write beyond the bound returned at once: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	g.gate <- struct{}{} // chunk 1 written
	if err := <-admitted; err != nil {
		t.Fatal(err)
	}
	<-g.entered // chunk 2 in progress
	writes, _ := g.got()
	if n := len(bytes.Join(writes, nil)); n != 8<<10 {
		t.Fatalf("the waiting writer got in after %d bytes were written, want one chunk (8192)", n)
	}
}
