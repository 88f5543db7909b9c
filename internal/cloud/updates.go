package cloud

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// maxRepoRequests bounds the update repository's requests served at once; more are answered 503.
const maxRepoRequests = 256

// repoServer serves the update repository directory (Config.Repo) to gateways: the TUF metadata under
// /metadata/ and the targets under /targets/, files only (no directory listing), Range requests answered.
// The TLS listener requires a gateway certificate (the gateways' MQTT listener's checks: gateway-ca.crt,
// client authentication, not on gateway-crl.pem). The files are opened through an [os.Root], so no path
// (dot-dot, symbolic link) leaves the directory.
type repoServer struct {
	root     *os.Root
	log      *slog.Logger
	slots    chan struct{}
	requests *prometheus.CounterVec // outcome
	bytes    prometheus.Counter
}

func newRepoServer(dir string, log *slog.Logger, reg prometheus.Registerer) (*repoServer, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("update repository: %w", err)
	}
	s := &repoServer{root: root, log: log.With("component", "updates"), slots: make(chan struct{}, maxRepoRequests),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vitalgate_cloud_updates_requests_total",
			Help: "Requests to the update repository by outcome (ok, not_found, bad_method, busy)."}, []string{"outcome"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "vitalgate_cloud_updates_bytes_total",
			Help: "Bytes of update repository files sent to gateways."})}
	for _, o := range []string{"ok", "not_found", "bad_method", "busy"} {
		s.requests.WithLabelValues(o)
	}
	reg.MustRegister(s.requests, s.bytes)
	return s, nil
}

// ServeHTTP answers GET and HEAD of a file under metadata/ or targets/.
func (s *repoServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	gw := ""
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		gw = r.TLS.PeerCertificates[0].Subject.CommonName
	}
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	default:
		s.refuse(w, r, gw, "busy", http.StatusServiceUnavailable, "too many requests at once")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		s.refuse(w, r, gw, "bad_method", http.StatusMethodNotAllowed, "method "+r.Method)
		return
	}
	name := path.Clean(strings.TrimPrefix(r.URL.Path, "/"))
	if !strings.HasPrefix(name, "metadata/") && !strings.HasPrefix(name, "targets/") {
		s.refuse(w, r, gw, "not_found", http.StatusNotFound, "outside metadata/ and targets/")
		return
	}
	f, err := s.root.Open(name)
	if err != nil {
		s.refuse(w, r, gw, "not_found", http.StatusNotFound, fileReason(err))
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		s.refuse(w, r, gw, "not_found", http.StatusNotFound, "not a file")
		return
	}
	cw := &countingWriter{ResponseWriter: w}
	http.ServeContent(cw, r, "", fi.ModTime(), f)
	s.bytes.Add(float64(cw.n))
	s.requests.WithLabelValues("ok").Inc()
	s.log.Info("update repository", "gateway", gw, "path", name, "range", r.Header.Get("Range"), "bytes", cw.n, "remote", r.RemoteAddr)
}

// fileReason says why a file could not be opened, without the directory's path.
func fileReason(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "no such file"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied"
	}
	return "outside the repository or unreadable"
}

func (s *repoServer) refuse(w http.ResponseWriter, r *http.Request, gw, outcome string, status int, why string) {
	s.requests.WithLabelValues(outcome).Inc()
	s.log.Warn("update repository request refused", "gateway", gw, "path", r.URL.Path, "status", status, "reason", why, "remote", r.RemoteAddr)
	http.Error(w, http.StatusText(status), status)
}

// countingWriter counts the body bytes written.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// bindUpdates binds the update repository's HTTPS listener, if one is configured.
func (b *Broker) bindUpdates() error {
	if b.cfg.Updates == "" {
		return nil
	}
	rs, err := newRepoServer(b.cfg.Repo, b.log, b.m.reg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", b.cfg.Updates)
	if err != nil {
		rs.root.Close()
		return fmt.Errorf("listen for updates on %s: %w", b.cfg.Updates, err)
	}
	b.repo = rs
	b.updatesLn = tls.NewListener(ln, b.gwTLS)
	b.updatesSrv = &http.Server{Handler: rs, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		// An image of tens of MiB over a slow uplink: a write may take minutes, not forever.
		WriteTimeout: 15 * time.Minute, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 16 << 10,
		ErrorLog: slog.NewLogLogger(b.log.Handler(), slog.LevelDebug)}
	return nil
}

// serveUpdates serves the update repository until Close.
func (b *Broker) serveUpdates() {
	if b.updatesSrv == nil {
		return
	}
	b.goroutine(func() {
		if err := b.updatesSrv.Serve(b.updatesLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			b.log.Error("update repository server failed", "error", err)
		}
	})
}

// UpdatesAddr is the bound address of the update repository's listener ("" when off).
func (b *Broker) UpdatesAddr() string {
	if b.updatesLn != nil {
		return b.updatesLn.Addr().String()
	}
	return b.cfg.Updates
}
