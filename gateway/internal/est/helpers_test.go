package est

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/smallstep/pkcs7"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// estEnv is a PKI with factory identities for dev-00001..dev-00003 (manufacturer acme) and an EST server on a
// real TLS listener on loopback.
type estEnv struct {
	t       testing.TB
	pki     string
	data    string
	srv     *Server
	url     string
	revoked sync.Map // serial (hex) -> true

	mu     sync.Mutex
	events []audit.Event
}

// newEstEnv starts the server; mod may change its options.
func newEstEnv(t testing.TB, mod func(*Options)) *estEnv {
	t.Helper()
	e := &estEnv{t: t, pki: t.TempDir(), data: t.TempDir()}
	if err := pki.Init(e.pki, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.IssueFactory(e.pki, pki.FactoryOptions{Count: 3}); err != nil {
		t.Fatal(err)
	}
	e.start(mod)
	return e
}

// start serves a new Server on the environment's PKI and data directory.
func (e *estEnv) start(mod func(*Options)) {
	e.t.Helper()
	ca, err := pki.OpenIssuingCA(e.pki)
	if err != nil {
		e.t.Fatal(err)
	}
	o := Options{PKI: e.pki, Data: e.data, CA: ca, Rate: 1000, Burst: 1000, GatewayID: "gw1",
		Log: slog.New(slog.DiscardHandler), Metrics: prometheus.NewRegistry(),
		Revoked: func(c *x509.Certificate) bool { _, ok := e.revoked.Load(c.SerialNumber.Text(16)); return ok },
		Event: func(ev audit.Event) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.events = append(e.events, ev)
		}}
	if mod != nil {
		mod(&o)
	}
	if e.srv, err = New(o); err != nil {
		e.t.Fatal(err)
	}
	cfg, err := ServerTLS(e.pki)
	if err != nil {
		e.t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	hs := &http.Server{Handler: e.srv, ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(ln)
	e.t.Cleanup(func() { hs.Close() })
	e.url = "https://" + ln.Addr().String() + Prefix
}

// client is an HTTPS client that trusts ca.crt and presents certFile/keyFile ("": none).
func (e *estEnv) client(certFile, keyFile string) *http.Client {
	e.t.Helper()
	cfg, err := pki.ClientTLS(filepath.Join(e.pki, pki.FileCA), certFile, keyFile)
	if err != nil {
		e.t.Fatal(err)
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

// factoryClient presents the factory identity of device id.
func (e *estEnv) factoryClient(id string) *http.Client {
	return e.client(pki.FactoryPaths(e.pki, id))
}

// certClient presents cert and key.
func (e *estEnv) certClient(cert *x509.Certificate, key crypto.Signer) *http.Client {
	cfg, err := pki.ClientTLS(filepath.Join(e.pki, pki.FileCA), "", "")
	if err != nil {
		e.t.Fatal(err)
	}
	cfg.Certificates = []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

// post sends body to route with Content-Type application/pkcs10 and returns the status and the body.
func (e *estEnv) post(c *http.Client, route string, body []byte) (int, []byte) {
	e.t.Helper()
	return e.do(c, http.MethodPost, route, "application/pkcs10", body)
}

func (e *estEnv) do(c *http.Client, method, route, ctype string, body []byte) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+route, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, route, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b
}

// newKey is a fresh P-256 key.
func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// csr is the base64 DER PKCS#10 request of key for CN cn.
func csr(t testing.TB, key crypto.Signer, cn string) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return []byte(base64.StdEncoding.EncodeToString(der))
}

// certsOf decodes a base64 PKCS#7 certs-only answer.
func certsOf(t *testing.T, body []byte) []*x509.Certificate {
	t.Helper()
	der, err := base64.StdEncoding.DecodeString(string(stripSpace(body)))
	if err != nil {
		t.Fatalf("answer is not base64: %v: %q", err, body)
	}
	p7, err := pkcs7.Parse(der)
	if err != nil {
		t.Fatalf("answer is not PKCS#7: %v", err)
	}
	return p7.Certificates
}

// lastEvent is the latest security event.
func (e *estEnv) lastEvent() audit.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.events) == 0 {
		e.t.Fatal("no security event")
	}
	return e.events[len(e.events)-1]
}

// eventCount is the number of security events recorded.
func (e *estEnv) eventCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.events)
}

// requests is the count of vitalgate_est_requests_total{op, outcome}.
func (e *estEnv) requests(op, outcome string) float64 {
	return testutil.ToFloat64(e.srv.requests.WithLabelValues(op, outcome))
}

// expectRefusal checks a refusal's status, its security event's verdict, device and detail.
func (e *estEnv) expectRefusal(status int, body []byte, wantStatus int, verdict, dev, detail string) {
	e.t.Helper()
	if status != wantStatus {
		e.t.Fatalf("status %d (%s), want %d", status, strings.TrimSpace(string(body)), wantStatus)
	}
	ev := e.lastEvent()
	if ev.Verdict != verdict || ev.Dev != dev || !strings.Contains(ev.Detail, detail) || ev.Remote == "" {
		e.t.Fatalf("event %+v, want verdict %s, dev %q, detail with %q and a remote address", ev, verdict, dev, detail)
	}
	if _, _, err := net.SplitHostPort(ev.Remote); err != nil {
		e.t.Errorf("event remote %q is not an address", ev.Remote)
	}
}
