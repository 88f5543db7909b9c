// Package est is the gateway's enrolment service: RFC 7030 (Enrollment over Secure Transport) on the gateway's
// HTTPS listener. It has three routes:
//
//   - GET /.well-known/est/cacerts: the issuing CA and the device CA, base64 PKCS#7 certs-only;
//   - POST /.well-known/est/simpleenroll: a device presents its factory identity (an IDevID of a manufacturer in
//     manufacturers/, on the allow-list enroll.yaml) and a CSR; it gets an operational certificate from the
//     gateway's issuing CA for its allow-listed device ID;
//   - POST /.well-known/est/simplereenroll: a device presents its current operational certificate and a CSR
//     for the same device ID; it gets a new certificate (a new key is allowed).
//
// The TLS handshake asks for a client certificate without verifying it ([ServerTLS]): each route verifies the
// one it needs against its own trust roots (manufacturers for simpleenroll, the device CA for
// simplereenroll), since one handshake cannot know which. Every refusal is an HTTP status and a security event
// (enroll_denied, enroll_malformed); every request is counted in vitalgate_est_requests_total.
package est

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/smallstep/pkcs7"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// Prefix is the path of the EST routes.
const Prefix = "/.well-known/est/"

// MaxBody is the largest request body read (a CSR in base64 is under 1 KiB).
const MaxBody = 16 << 10

// The security event verdicts of a refusal.
const (
	EventDenied    = "enroll_denied"    // not allowed: unknown or unlisted identity, wrong CN, revoked, flood
	EventMalformed = "enroll_malformed" // not understood: bad base64 or CSR, oversized body, wrong route or method
)

// Options configures a [Server].
type Options struct {
	PKI       string         // the PKI directory: manufacturers/, enroll.yaml, device-ca.crt
	Data      string         // the gateway's data directory: the factory identity bindings (BindingsFile)
	CA        *pki.IssuingCA // signs the operational certificates
	Validity  time.Duration  // of an operational certificate; 0: pki.OperationalValidity
	Rate      float64        // requests per second per client (certificate serial, or IP without one)
	Burst     int            // requests a client may make at once
	Revoked   func(*x509.Certificate) bool
	Event     func(audit.Event) // records a security event
	GatewayID string
	Log       *slog.Logger
	Metrics   prometheus.Registerer
}

// Server serves the EST routes. Its methods are safe for concurrent use.
type Server struct {
	o        Options
	trust    *trust
	bindings *bindings
	limits   *limiter
	requests *prometheus.CounterVec
}

// New loads the trust material and the bindings and registers the metrics.
func New(o Options) (*Server, error) {
	if o.CA == nil || o.Event == nil || o.Log == nil {
		return nil, errors.New("est: CA, Event and Log are required")
	}
	if o.Validity == 0 {
		o.Validity = pki.OperationalValidity
	}
	t, err := newTrust(o.PKI, o.CA, o.Log)
	if err != nil {
		return nil, err
	}
	b, err := openBindings(filepath.Join(o.Data, BindingsFile))
	if err != nil {
		return nil, err
	}
	s := &Server{o: o, trust: t, bindings: b, limits: newLimiter(o.Rate, o.Burst, maxClients),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vitalgate_est_requests_total",
			Help: "EST requests by operation (cacerts, simpleenroll, simplereenroll, other) and outcome."}, []string{"op", "outcome"})}
	if o.Metrics != nil {
		o.Metrics.MustRegister(s.requests)
	}
	return s, nil
}

// ServerTLS is the HTTPS listener's TLS configuration: the gateway's server certificate (reloaded when its
// files change), TLS 1.2 or later, and a client certificate asked for but not verified at the handshake.
func ServerTLS(pkiDir string) (*tls.Config, error) {
	c, err := pki.ServerTLS(filepath.Join(pkiDir, pki.FileGateway), filepath.Join(pkiDir, pki.FileGatewayKey), nil, nil)
	if err != nil {
		return nil, err
	}
	c.ClientAuth = tls.RequestClientCert
	return c, nil
}

// refusal is a refused request: its status, its security event verdict and what the client is told.
type refusal struct {
	status  int
	verdict string
	detail  string
	dev     string // the device ID, when known
}

func (r *refusal) Error() string { return r.detail }

func deny(dev, format string, a ...any) *refusal {
	return &refusal{status: http.StatusForbidden, verdict: EventDenied, detail: fmt.Sprintf(format, a...), dev: dev}
}

func malformed(status int, format string, a ...any) *refusal {
	return &refusal{status: status, verdict: EventMalformed, detail: fmt.Sprintf(format, a...)}
}

// ServeHTTP routes a request under [Prefix], after the client's rate limit.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	op, method := route(r.URL.Path)
	if wait, ok := s.limits.allow(s.clientKey(r), time.Now()); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(int(wait/time.Second)+1))
		s.refuse(w, r, op, &refusal{status: http.StatusTooManyRequests, verdict: EventDenied,
			detail: fmt.Sprintf("%s: more than %g requests per second from this client", op, s.o.Rate)})
		return
	}
	var err error
	switch {
	case method == "":
		err = malformed(http.StatusNotFound, "no EST route %q", r.URL.Path)
	case r.Method != method:
		w.Header().Set("Allow", method)
		err = malformed(http.StatusMethodNotAllowed, "%s: method %s, want %s", op, r.Method, method)
	case op == "cacerts":
		err = s.cacerts(w)
	case op == "simpleenroll":
		err = s.enroll(w, r)
	default:
		err = s.reenroll(w, r)
	}
	if err != nil {
		var ref *refusal
		if !errors.As(err, &ref) {
			s.o.Log.Error("est", "op", op, "remote", r.RemoteAddr, "error", err)
			http.Error(w, "internal error", http.StatusInternalServerError)
			s.requests.WithLabelValues(op, "error").Inc()
			return
		}
		s.refuse(w, r, op, ref)
		return
	}
	s.requests.WithLabelValues(op, "ok").Inc()
}

// route returns the operation of path and its method; "" for an unknown path.
func route(path string) (op, method string) {
	switch path {
	case Prefix + "cacerts":
		return "cacerts", http.MethodGet
	case Prefix + "simpleenroll":
		return "simpleenroll", http.MethodPost
	case Prefix + "simplereenroll":
		return "simplereenroll", http.MethodPost
	}
	return "other", ""
}

// outcomes names the metric outcome of each refusal status.
var outcomes = map[int]string{http.StatusForbidden: "denied", http.StatusBadRequest: "malformed",
	http.StatusUnsupportedMediaType: "malformed", http.StatusRequestEntityTooLarge: "too_large",
	http.StatusTooManyRequests: "rate_limited", http.StatusNotFound: "not_found", http.StatusMethodNotAllowed: "bad_method"}

// refuse answers ref's status with its detail, records the security event and counts it.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, op string, ref *refusal) {
	s.requests.WithLabelValues(op, outcomes[ref.status]).Inc()
	s.o.Event(audit.Event{V: 1, TS: time.Now().UnixMilli(), GW: s.o.GatewayID, Dev: ref.dev, Verdict: ref.verdict,
		Detail: ref.detail, Remote: r.RemoteAddr})
	http.Error(w, ref.detail, ref.status)
}

// cacerts answers the issuing CA and the device CA.
func (s *Server) cacerts(w http.ResponseWriter) error {
	return writeCerts(w, s.o.CA.Cert(), s.trust.deviceCA)
}

// writeCerts answers certs as base64 PKCS#7 certs-only (RFC 7030 section 4.1.3).
func writeCerts(w http.ResponseWriter, certs ...*x509.Certificate) error {
	var der []byte
	for _, c := range certs {
		der = append(der, c.Raw...)
	}
	p7, err := pkcs7.DegenerateCertificate(der)
	if err != nil {
		return fmt.Errorf("PKCS#7 certs-only: %w", err)
	}
	w.Header().Set("Content-Type", "application/pkcs7-mime; smime-type=certs-only")
	w.Header().Set("Content-Transfer-Encoding", "base64")
	enc := base64.StdEncoding.EncodeToString(p7)
	for len(enc) > 76 { // MIME lines
		fmt.Fprintf(w, "%s\r\n", enc[:76])
		enc = enc[76:]
	}
	fmt.Fprintf(w, "%s\r\n", enc)
	return nil
}
