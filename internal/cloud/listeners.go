package cloud

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/vitalgate/vitalgate/internal/listen"
)

// Listener IDs, as mochi reports them in cl.Net.Listener.
const (
	listenerGateways = "gateways"
	listenerApps     = "apps"
	listenerWS       = "ws"
)

// gatewayWriteTimeout bounds each write to a gateway. Gateway connections
// batch their writes (a gateway keeps hundreds of QoS 1 publishes in flight,
// so its PUBACKs leave together); a gateway that reads nothing for this long
// is disconnected.
const gatewayWriteTimeout = 30 * time.Second

// wsListener is a mochi listener for MQTT over WebSocket over TLS. mochi's own
// WebSocket listener binds only in Serve (so ":0" cannot be resolved and a
// busy port is only logged); this one binds in Init, bounds the handshake
// time and the WebSocket message size.
type wsListener struct {
	id       string
	address  string
	tls      *tls.Config
	deadline time.Duration
	maxMsg   int64
	// writeTimeout bounds a write without progress (see Config.AppWriteTimeout).
	writeTimeout time.Duration
	ln           net.Listener
	srv          *http.Server
	upgrader     websocket.Upgrader
	establish    listeners.EstablishFn
	gate         *listen.Gate
	end          atomic.Bool
	log          *slog.Logger
}

var _ listeners.Listener = (*wsListener)(nil)

func (l *wsListener) ID() string       { return l.id }
func (l *wsListener) Protocol() string { return "wss" }

// Address is the bound address once Init has run.
func (l *wsListener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.address
}

// Init binds the address.
func (l *wsListener) Init(log *slog.Logger) error {
	l.log = log
	ln, err := net.Listen("tcp", l.address)
	if err != nil {
		return err
	}
	l.ln = tls.NewListener(ln, l.tls)
	l.upgrader = websocket.Upgrader{
		Subprotocols:     []string{"mqtt"},
		HandshakeTimeout: l.deadline,
		// Apps authenticate with a JWT in CONNECT, not with cookies, so a
		// cross-origin page gains nothing from a browser's ambient credentials.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", l.handle)
	l.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: l.deadline,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return nil
}

func (l *wsListener) handle(w http.ResponseWriter, r *http.Request) {
	c, err := l.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer c.Close()
	c.SetReadLimit(l.maxMsg)
	conn := &wsConn{Conn: c.UnderlyingConn(), c: c, timeout: l.writeTimeout}
	_ = conn.SetDeadline(time.Now().Add(l.deadline))
	l.gate.Do(conn, func() {
		if err := l.establish(l.id, conn); err != nil && !errors.Is(err, io.EOF) {
			l.log.Debug("connection ended", "remote", r.RemoteAddr, "error", err)
		}
	})
}

// Serve serves WebSocket upgrades until Close.
func (l *wsListener) Serve(establish listeners.EstablishFn) {
	l.establish = establish
	if err := l.srv.Serve(l.ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !l.end.Load() {
		l.log.Error("websocket listener failed", "error", err)
	}
}

// Close stops the HTTP server and disconnects this listener's clients.
func (l *wsListener) Close(listeners.CloseFn) {
	if l.end.CompareAndSwap(false, true) {
		if l.srv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = l.srv.Shutdown(ctx)
			cancel()
		} else if l.ln != nil {
			_ = l.ln.Close()
		}
		l.gate.Close(l.id)
	}
}

// wsConn presents a WebSocket as the byte stream mochi reads MQTT from
// (binary messages only). Each write has a deadline of timeout (never later
// than one set with SetWriteDeadline); a write that fails closes the
// connection, so mochi ends the client at once.
type wsConn struct {
	net.Conn
	c       *websocket.Conn
	r       io.Reader
	timeout time.Duration
	mu      sync.Mutex // serialises writers

	limitMu sync.Mutex
	limit   time.Time // SetWriteDeadline's (zero: none)
	err     error     // the write error that closed the connection
}

// SetWriteDeadline sets a limit that no later write runs past, and the
// deadline of a write in progress.
func (ws *wsConn) SetWriteDeadline(t time.Time) error {
	ws.limitMu.Lock()
	ws.limit = t
	ws.limitMu.Unlock()
	return ws.Conn.SetWriteDeadline(t)
}

// WriteErr is the write error that closed the connection, if one did.
func (ws *wsConn) WriteErr() error {
	ws.limitMu.Lock()
	defer ws.limitMu.Unlock()
	return ws.err
}

func (ws *wsConn) Read(p []byte) (int, error) {
	for {
		if ws.r == nil {
			op, r, err := ws.c.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errors.New("websocket message not binary")
			}
			ws.r = r
		}
		n, err := ws.r.Read(p)
		if errors.Is(err, io.EOF) {
			ws.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (ws *wsConn) Write(p []byte) (int, error) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.limitMu.Lock()
	d := ws.limit
	if ws.timeout > 0 {
		if t := time.Now().Add(ws.timeout); d.IsZero() || t.Before(d) {
			d = t
		}
	}
	ws.limitMu.Unlock()
	_ = ws.c.SetWriteDeadline(d)
	if err := ws.c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		ws.limitMu.Lock()
		if ws.err == nil {
			ws.err = err
		}
		ws.limitMu.Unlock()
		_ = ws.Conn.Close()
		return 0, err
	}
	return len(p), nil
}
