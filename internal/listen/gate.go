// Package listen holds what the project's mochi listeners share.
//
// mochi v2.7.9 counts live clients in Server.Listeners.ClientsWg: each
// connection's goroutine calls Add(1) inside EstablishConnection, and
// Server.Close waits on the group after closing the listeners. A connection
// accepted just before Close can therefore call Add(1) while Close is already
// waiting, which the race detector reports and which can let Close return
// before that client is gone. A [Gate] closes the gap: it adds to the group
// before the goroutine starts, under a lock that the listener's Close takes,
// so every Add happens before the Wait.
//
// mochi's own way of disconnecting a listener's clients at Close
// (Clients.GetByListener) takes the clients' read lock twice; a client
// connecting or leaving in between makes it wait forever. It also misses a
// connection whose CONNECT has not arrived yet, which Close then waits for.
// [Gate.Close] instead tells the connected clients, with a bounded write,
// and then closes every connection it admitted.
package listen

import (
	"net"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// disconnectWrite bounds the DISCONNECT written to each client at Close, so
// a peer that stopped reading cannot hold the shutdown.
const disconnectWrite = time.Second

// Gate admits connections into a mochi server until it is closed.
type Gate struct {
	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	wg     *sync.WaitGroup
	server *mqtt.Server
}

// NewGate returns a gate for the listener of s that uses it.
func NewGate(s *mqtt.Server) *Gate {
	return &Gate{wg: &s.Listeners.ClientsWg, server: s, conns: make(map[net.Conn]struct{})}
}

// Go runs f (which calls mochi's establish function for c) in a new
// goroutine, counted in the server's group, unless the gate is closed; it
// reports whether f was started.
func (g *Gate) Go(c net.Conn, f func()) bool {
	if !g.enter(c) {
		return false
	}
	go func() {
		defer g.leave(c)
		f()
	}()
	return true
}

// Do runs f for c in the calling goroutine, counted in the server's group,
// unless the gate is closed; it reports whether f ran.
func (g *Gate) Do(c net.Conn, f func()) bool {
	if !g.enter(c) {
		return false
	}
	defer g.leave(c)
	f()
	return true
}

func (g *Gate) enter(c net.Conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.conns[c] = struct{}{}
	g.wg.Add(1)
	return true
}

func (g *Gate) leave(c net.Conn) {
	g.mu.Lock()
	delete(g.conns, c)
	g.mu.Unlock()
	g.wg.Done()
}

// Close stops admitting connections, sends the connected clients of the
// listener id a DISCONNECT (server shutting down) and closes every
// connection it admitted, connected or not. Call it from the listener's
// Close (in place of mochi's closeClients function), which mochi calls
// before it waits for its clients.
func (g *Gate) Close(id string) {
	g.mu.Lock()
	g.closed = true
	conns := make([]net.Conn, 0, len(g.conns))
	for c := range g.conns {
		conns = append(conns, c)
	}
	g.mu.Unlock()
	deadline := time.Now().Add(disconnectWrite)
	for _, cl := range g.server.Clients.GetAll() {
		if cl.Net.Listener == id && !cl.Closed() {
			if cl.Net.Conn != nil {
				_ = cl.Net.Conn.SetWriteDeadline(deadline)
			}
			_ = g.server.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
	for _, c := range conns {
		_ = c.Close()
	}
}
