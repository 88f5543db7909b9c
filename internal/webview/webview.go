// Package webview serves the clinician web view: a static page, embedded in
// the program, that signs in with an app token and reads a site's telemetry
// live from the broker's MQTT over WebSocket listener, as any app does.
//
// # What the server does
//
// It serves the page and its scripts over HTTPS (the broker's certificate,
// TLS 1.2 at least) and one small JSON document, /config.json: the port of
// the WebSocket listener, the deployment's ca.crt (the anchor the page
// checks the devices' published certificate chains against) and the
// clinical alert thresholds ([Alerts]). It holds no session and sees no
// token: the page keeps the token in the tab's sessionStorage and sends it
// to the broker only, as the MQTT password.
//
// Every response carries a strict Content-Security-Policy (scripts and
// styles from the server only, no inline script, connections to the server
// and the WebSocket port of the page's host only, no framing),
// X-Content-Type-Options nosniff and Referrer-Policy no-referrer.
//
// # What the page does
//
// The page (static/app.js) subscribes to certs/, telemetry/, gateways/ and
// security/ of each site of its token, checks every record's COSE_Sign1
// with WebCrypto against the device's published certificate (chained to
// ca.crt, common name = device ID) and compares the record with the signed
// payload, as `broker watch` does. Every value is put into the page as text,
// never as markup. The vendored libraries (mqtt.js, uPlot) are listed in
// static/vendor/README.md.
package webview

import (
	"cmp"
	"context"
	"crypto/tls"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"
)

//go:embed static
var static embed.FS

// Options configure a [Server]. Addr, TLS and WSPort are required.
type Options struct {
	// Addr is the HTTPS listener, host:port (port 0: chosen by the OS).
	Addr string
	// TLS is the server identity (the broker's certificate); the server
	// raises its MinVersion to TLS 1.2 if lower.
	TLS *tls.Config
	// WSPort is the port of the broker's MQTT over WebSocket+TLS listener:
	// the page connects to wss://{the host it was loaded from}:{WSPort}/.
	WSPort int
	// CA is ca.crt in PEM: the anchor of the devices' certificate chains.
	CA []byte
	// Alerts are the clinical thresholds; measurements not named keep
	// their defaults ([Alerts.Effective]).
	Alerts Alerts
	// SitesClaim and RoleClaim name the token claims the page reads the
	// sites to show and the role from (default "sites" and "role", the
	// claims of `certs token`; an outside identity provider may use
	// others). The broker checks the token; the page only reads them. A
	// sites claim may be an array or a string of names separated by spaces
	// or commas; without one, the user names the sites at sign-in.
	SitesClaim, RoleClaim string
	Log                   *slog.Logger
}

// Server is the web view's HTTPS server. Create it with [New], run it with
// [Server.Start], stop it with [Server.Close].
type Server struct {
	o      Options
	files  map[string]file
	config []byte

	ln        net.Listener
	srv       *http.Server
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// file is an embedded file and its content type.
type file struct {
	data  []byte
	ctype string
}

// New checks o and prepares the responses; nothing is bound until
// [Server.Start].
func New(o Options) (*Server, error) {
	switch {
	case o.Addr == "":
		return nil, errors.New("webview: no address")
	case o.TLS == nil:
		return nil, errors.New("webview: no TLS configuration")
	case o.WSPort <= 0 || o.WSPort > 65535:
		return nil, fmt.Errorf("webview: WebSocket port %d outside 1..65535", o.WSPort)
	case len(o.CA) == 0:
		return nil, errors.New("webview: no CA certificate")
	}
	if err := o.Alerts.Validate(); err != nil {
		return nil, err
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	s := &Server{o: o, files: map[string]file{}}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := static.ReadFile(p)
		if err != nil {
			return err
		}
		ctype := mime.TypeByExtension(path.Ext(p))
		if ctype == "" {
			ctype = "application/octet-stream"
		}
		s.files[strings.TrimPrefix(p, "static")] = file{data: data, ctype: ctype}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("webview: embedded files: %w", err)
	}
	if s.config, err = configJSON(o); err != nil {
		return nil, err
	}
	return s, nil
}

// csp is the Content-Security-Policy of a response to a request for host
// (the Host header: the name the page was loaded by, which it connects to
// the WebSocket listener by). connect-src names that host alone, so a
// script that got into the page could not send the token elsewhere; a
// host CSP cannot name (an IPv6 literal) gets any host on the WebSocket
// port.
func (s *Server) csp(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	ws := "wss://*:" + strconv.Itoa(s.o.WSPort)
	if cspHost(host) {
		ws = "wss://" + host + ":" + strconv.Itoa(s.o.WSPort)
	}
	return "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
		"connect-src 'self' " + ws + "; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
}

// cspHost: a host name or IPv4 address that a CSP source expression can
// hold as it is (letters, digits, '-' and '.'; no empty label).
func cspHost(h string) bool {
	if h == "" || len(h) > 253 || strings.HasPrefix(h, ".") || strings.HasSuffix(h, ".") || strings.Contains(h, "..") {
		return false
	}
	for _, c := range []byte(h) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// pageConfig is /config.json.
type pageConfig struct {
	V            int           `json:"v"`
	WSPort       int           `json:"ws_port"`
	SitesClaim   string        `json:"sites_claim"`
	RoleClaim    string        `json:"role_claim"`
	CA           string        `json:"ca"`
	Measurements []measurement `json:"measurements"`
}

type measurement struct {
	Name  string   `json:"name"`
	Codes []string `json:"codes"`
	Label string   `json:"label"`
	Unit  string   `json:"unit"`
	Limit
}

func configJSON(o Options) ([]byte, error) {
	eff := o.Alerts.Effective()
	c := pageConfig{V: 1, WSPort: o.WSPort, CA: string(o.CA), SitesClaim: cmp.Or(o.SitesClaim, "sites"), RoleClaim: cmp.Or(o.RoleClaim, "role")}
	for _, m := range Measurements {
		c.Measurements = append(c.Measurements, measurement{Name: m.Name, Codes: m.Codes, Label: m.Label, Unit: m.Unit, Limit: eff[m.Name]})
	}
	return json.Marshal(c)
}

// Handler is the web view's HTTP handler (what [Server.Start] serves).
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serve) }

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", s.csp(r.Host))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cache-Control", "no-cache")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	p := r.URL.Path
	switch p {
	case "/", "/index.html":
		p = "/index.html"
	case "/config.json":
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "no-store")
		_, _ = w.Write(s.config)
		return
	}
	f, ok := s.files[p]
	if !ok {
		http.NotFound(w, r)
		return
	}
	h.Set("Content-Type", f.ctype)
	h.Set("Content-Length", strconv.Itoa(len(f.data)))
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(f.data)
}

// Start binds the address and serves until Close.
func (s *Server) Start() error {
	if s.ln != nil {
		return errors.New("webview: already started")
	}
	tc := s.o.TLS.Clone()
	if tc.MinVersion < tls.VersionTLS12 {
		tc.MinVersion = tls.VersionTLS12
	}
	tc.NextProtos = []string{"h2", "http/1.1"}
	ln, err := net.Listen("tcp", s.o.Addr)
	if err != nil {
		return fmt.Errorf("webview: listen on %s: %w", s.o.Addr, err)
	}
	s.ln = ln
	s.srv = &http.Server{
		Handler:           s.Handler(),
		TLSConfig:         tc,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.o.Log.Handler(), slog.LevelDebug),
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.o.Log.Error("web view server failed", "error", err)
		}
	}()
	return nil
}

// Addr is the bound address once started (Options.Addr before).
func (s *Server) Addr() string {
	if s.ln != nil {
		return s.ln.Addr().String()
	}
	return s.o.Addr
}

// Close stops the server, waiting up to 5 seconds for requests under way.
// It is safe to call twice.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		if s.srv == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = s.srv.Shutdown(ctx)
		s.wg.Wait()
	})
	return err
}
