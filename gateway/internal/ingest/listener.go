package ingest

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"golang.org/x/time/rate"

	"github.com/vitalgate/vitalgate/internal/listen"
)

// ListenerConfig bounds what a peer can make the device listener spend before
// it has proved who it is.
type ListenerConfig struct {
	TLS              *tls.Config   // must require and verify client certificates
	MaxConns         int           // open device connections, handshaking included
	AcceptRate       float64       // TLS handshakes started per second (admission control)
	HandshakeTimeout time.Duration // for the TLS handshake, and again for the MQTT CONNECT
	// OnHandshake is told the outcome of every handshake: err is nil on
	// success. It is called from the handshake's goroutine.
	OnHandshake func(remote string, state *tls.ConnectionState, err error)
	// OnRefused is told of a connection closed because MaxConns was reached,
	// and of one the kernel could not hand over because the process is out
	// of file descriptors (remote is "" then).
	OnRefused func(remote string)
}

// FDReserve is the number of file descriptors [ConnCap] keeps for
// everything but device connections: the queue and audit files, the HTTP
// endpoints, the cloud connections, an embedded cloud broker and its
// clients, and the process's own.
const FDReserve = 512

// ConnCap is the cap on device connections the process can honour with a
// limit of nofile open files (RLIMIT_NOFILE): maxConns, lowered to nofile
// minus [FDReserve] (at least a quarter of nofile) when that is smaller.
// Above it, half-open connections would use up every descriptor: accept
// fails with EMFILE, the other files and a valid device's connection can no
// longer be opened, and nothing is refused or counted. lowered reports a
// lowered cap.
func ConnCap(maxConns int, nofile uint64) (limit int, lowered bool) {
	avail := nofile / 4
	if nofile > FDReserve && nofile-FDReserve > avail {
		avail = nofile - FDReserve
	}
	if avail >= uint64(maxConns) {
		return maxConns, false
	}
	return max(int(avail), 1), true
}

// Listener is a net.Listener for mochi's listeners.NewNet that hands over only
// connections that completed the mutual-TLS handshake. It admits new
// handshakes at a bounded rate, caps concurrent connections, and puts a
// deadline on both the handshake and the CONNECT packet that follows, so a
// reconnect storm or a slow-loris peer costs bounded CPU and memory.
type Listener struct {
	cfg     ListenerConfig
	raw     net.Listener
	limiter *rate.Limiter
	slots   chan struct{}
	ready   chan net.Conn
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	open    atomic.Int64
}

// Listen starts accepting on addr.
func Listen(addr string, cfg ListenerConfig) (*Listener, error) {
	if cfg.TLS == nil || cfg.TLS.ClientAuth != tls.RequireAndVerifyClientCert {
		return nil, errors.New("device listener: TLS config must require and verify client certificates")
	}
	raw, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	burst := int(cfg.AcceptRate / 10)
	if burst < 1 {
		burst = 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Listener{
		cfg:     cfg,
		raw:     raw,
		limiter: rate.NewLimiter(rate.Limit(cfg.AcceptRate), burst),
		slots:   make(chan struct{}, cfg.MaxConns),
		ready:   make(chan net.Conn),
		ctx:     ctx,
		cancel:  cancel,
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	for {
		c, err := l.raw.Accept()
		if err != nil {
			if l.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				if l.cfg.OnRefused != nil {
					l.cfg.OnRefused("") // a connection waits that cannot be taken
				}
			}
			// Resource exhaustion (EMFILE and friends): back off briefly.
			select {
			case <-time.After(50 * time.Millisecond):
				continue
			case <-l.ctx.Done():
				return
			}
		}
		select {
		case l.slots <- struct{}{}:
		default:
			if l.cfg.OnRefused != nil {
				l.cfg.OnRefused(c.RemoteAddr().String())
			}
			c.Close()
			continue
		}
		if err := l.limiter.Wait(l.ctx); err != nil {
			c.Close()
			<-l.slots
			return
		}
		l.open.Add(1)
		l.wg.Add(1)
		go l.handshake(c)
	}
}

func (l *Listener) handshake(c net.Conn) {
	defer l.wg.Done()
	tc := tls.Server(c, l.cfg.TLS)
	ctx, cancel := context.WithTimeout(l.ctx, l.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	remote := c.RemoteAddr().String()
	if err != nil {
		if l.cfg.OnHandshake != nil && l.ctx.Err() == nil {
			l.cfg.OnHandshake(remote, nil, err)
		}
		tc.Close()
		l.release()
		return
	}
	if l.cfg.OnHandshake != nil {
		st := tc.ConnectionState()
		l.cfg.OnHandshake(remote, &st, nil)
	}
	// mochi refreshes the deadline from the keepalive once CONNECT is read.
	_ = tc.SetDeadline(time.Now().Add(l.cfg.HandshakeTimeout))
	conn := &Conn{Conn: tc, release: l.release}
	select {
	case l.ready <- conn:
	case <-l.ctx.Done():
		conn.Close()
	}
}

func (l *Listener) release() {
	l.open.Add(-1)
	<-l.slots
}

// Accept returns the next connection that completed its handshake.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Close stops accepting and waits for handshakes in progress to end.
// Connections already handed over are mochi's to close. Safe to call twice.
func (l *Listener) Close() error {
	l.cancel()
	err := l.raw.Close()
	l.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Addr is the bound address.
func (l *Listener) Addr() net.Addr { return l.raw.Addr() }

// MaxConns is the cap on device connections, handshaking ones included.
func (l *Listener) MaxConns() int { return cap(l.slots) }

// Open is the number of device connections, handshaking ones included.
func (l *Listener) Open() int64 { return l.open.Load() }

// Conn is a device connection that completed mutual TLS. Closing it frees its
// slot under MaxConns.
type Conn struct {
	*tls.Conn
	once    sync.Once
	release func()
	mu      sync.Mutex
	closed  bool
	onClose []func()
}

// OnClose registers f to run once when the connection is closed (at once if
// it already is).
func (c *Conn) OnClose(f func()) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		f()
		return
	}
	c.onClose = append(c.onClose, f)
	c.mu.Unlock()
}

// Close closes the connection, frees its slot and runs the OnClose
// functions, once.
func (c *Conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.release()
		c.mu.Lock()
		c.closed = true
		fs := c.onClose
		c.mu.Unlock()
		for _, f := range fs {
			f()
		}
	})
	return err
}

// Mochi adapts the listener to mochi's listeners.Listener for server s.
// Connections are counted in the server's clients before their goroutine
// starts, so the server's Close waits for every one, and Close disconnects
// them without mochi's deadlock-prone lookup (see [listen.Gate]).
func (l *Listener) Mochi(id string, s *mqtt.Server) listeners.Listener {
	return &mochiListener{l: l, id: id, gate: listen.NewGate(s)}
}

type mochiListener struct {
	l    *Listener
	id   string
	gate *listen.Gate
	log  *slog.Logger
}

func (m *mochiListener) ID() string                  { return m.id }
func (m *mochiListener) Address() string             { return m.l.Addr().String() }
func (m *mochiListener) Protocol() string            { return "tls" } // mutual TLS: every connection has completed its handshake
func (m *mochiListener) Init(log *slog.Logger) error { m.log = log; return nil }

// Serve hands every connection that completed its handshake to mochi.
func (m *mochiListener) Serve(establish listeners.EstablishFn) {
	for {
		c, err := m.l.Accept()
		if err != nil {
			return
		}
		ok := m.gate.Go(c, func() {
			if err := establish(m.id, c); err != nil && m.log != nil {
				m.log.Debug("device connection ended", "remote", c.RemoteAddr().String(), "error", err)
			}
		})
		if !ok {
			c.Close()
			return
		}
	}
}

// Close stops accepting and disconnects the listener's clients.
func (m *mochiListener) Close(listeners.CloseFn) {
	m.l.Close()
	m.gate.Close(m.id)
}
