package listen

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/vitalgate/vitalgate/internal/packetconn"
)

// Listener is a mochi listener for MQTT over TCP, with TLS when it has a
// TLS config. Unlike mochi's TCP listener it gives each new connection a
// deadline for the handshake and CONNECT (mochi sets none before CONNECT, so
// a silent peer would hold a goroutine forever; mochi replaces the deadline
// with the keepalive after CONNECT), and it admits connections through a
// [Gate], so that the server's Close neither races nor deadlocks.
type Listener struct {
	id       string
	address  string
	tls      *tls.Config
	deadline time.Duration
	gate     *Gate
	batch    time.Duration // > 0: connections batch their writes, each flush bounded by it
	ln       net.Listener
	end      atomic.Bool
	log      *slog.Logger
}

var _ listeners.Listener = (*Listener)(nil)

// NewListener returns a listener for server s, to add with s.AddListener.
// tc nil serves plain TCP. deadline bounds the TLS handshake and CONNECT.
func NewListener(s *mqtt.Server, id, address string, tc *tls.Config, deadline time.Duration) *Listener {
	return &Listener{id: id, address: address, tls: tc, deadline: deadline, gate: NewGate(s)}
}

// BatchWrites makes the listener's connections batch their writes
// ([packetconn.Batching]): the packets written while a write is in progress
// leave together. It suits peers that keep many QoS 1 messages in flight,
// such as gateways, whose PUBACKs then cost one system call per batch.
// timeout bounds each write. Call it before the server starts.
func (l *Listener) BatchWrites(timeout time.Duration) *Listener {
	l.batch = timeout
	return l
}

// ID is the listener's ID, as mochi reports it in cl.Net.Listener.
func (l *Listener) ID() string { return l.id }

// Protocol is "tls" or "tcp".
func (l *Listener) Protocol() string {
	if l.tls != nil {
		return "tls"
	}
	return "tcp"
}

// Address is the bound address once Init has run (":0" resolved).
func (l *Listener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.address
}

// Init binds the address.
func (l *Listener) Init(log *slog.Logger) error {
	l.log = log
	ln, err := net.Listen("tcp", l.address)
	if err != nil {
		return err
	}
	if l.tls != nil {
		ln = tls.NewListener(ln, l.tls)
	}
	l.ln = ln
	return nil
}

// Serve accepts connections until Close.
func (l *Listener) Serve(establish listeners.EstablishFn) {
	var delay time.Duration
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			if l.end.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Anything else (out of file descriptors, a timeout) passes:
			// back off, as net/http does, rather than stop serving.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			if l.log != nil {
				l.log.Error("accept failed; retrying", "listener", l.id, "error", err, "retry_in", delay)
			}
			time.Sleep(delay)
			continue
		}
		delay = 0
		if l.end.Load() {
			_ = conn.Close()
			return
		}
		_ = conn.SetDeadline(time.Now().Add(l.deadline))
		if l.batch > 0 {
			conn = packetconn.NewBatching(conn, l.batch)
		}
		started := l.gate.Go(conn, func() {
			if err := establish(l.id, conn); err != nil && !errors.Is(err, io.EOF) && l.log != nil {
				l.log.Debug("connection ended", "listener", l.id, "remote", conn.RemoteAddr().String(), "error", err)
			}
		})
		if !started {
			_ = conn.Close()
			return
		}
	}
}

// Close stops accepting and disconnects this listener's clients.
func (l *Listener) Close(listeners.CloseFn) {
	if l.end.CompareAndSwap(false, true) {
		if l.ln != nil {
			_ = l.ln.Close()
		}
		l.gate.Close(l.id)
	}
}
