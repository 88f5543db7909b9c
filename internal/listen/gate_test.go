package listen

import (
	"net"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// Connections keep arriving while the server closes: every admitted one is
// counted before Close returns, so Wait covers it (run with -race).
func TestGateOrdersAddBeforeWait(t *testing.T) {
	for round := 0; round < 50; round++ {
		srv := mqtt.New(nil)
		wg := &srv.Listeners.ClientsWg
		g := NewGate(srv)
		var ran, admitted sync.WaitGroup
		stop := make(chan struct{})
		admitted.Add(1)
		go func() {
			defer admitted.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				a, b := net.Pipe()
				ran.Add(1)
				if !g.Go(a, func() { wg.Add(1); wg.Done(); ran.Done() }) {
					ran.Done()
					a.Close()
					b.Close()
					return
				}
				b.Close()
			}
		}()
		g.Close("test")
		wg.Wait()
		close(stop)
		admitted.Wait()
		ran.Wait()
		a, _ := net.Pipe()
		if g.Go(a, func() {}) || g.Do(a, func() {}) {
			t.Fatal("closed gate admitted a connection")
		}
	}
}

// A connection admitted but not yet an MQTT client (no CONNECT yet) is
// closed by Close, so the server's wait for its clients ends.
func TestGateClosesSilentConnections(t *testing.T) {
	srv := mqtt.New(nil)
	g := NewGate(srv)
	a, b := net.Pipe()
	defer b.Close()
	done := make(chan struct{})
	g.Go(a, func() {
		defer close(done)
		a.Read(make([]byte, 1)) // a peer that never sends CONNECT
	})
	g.Close("test")
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a silent connection outlived Close")
	}
	srv.Listeners.ClientsWg.Wait()
}
