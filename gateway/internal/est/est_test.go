package est

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

func TestCACerts(t *testing.T) {
	e := newEstEnv(t, nil)
	status, body := e.do(e.client("", ""), http.MethodGet, "cacerts", "", nil)
	if status != http.StatusOK {
		t.Fatalf("cacerts: %d %s", status, body)
	}
	certs := certsOf(t, body)
	issuing, _ := pki.LoadCert(filepath.Join(e.pki, pki.FileIssuingCA))
	device, _ := pki.LoadCert(filepath.Join(e.pki, pki.FileDeviceCA))
	if len(certs) != 2 || !certs[0].Equal(issuing) || !certs[1].Equal(device) {
		t.Fatalf("cacerts has %d certificates, want the issuing CA and the device CA", len(certs))
	}
	if e.requests("cacerts", "ok") != 1 {
		t.Error("cacerts not counted")
	}
}

// TestEnroll enrols a factory identity as its allow-listed ID, twice (the same identity as the same ID is
// allowed again), with a P-256 and an Ed25519 key.
func TestEnroll(t *testing.T) {
	e := newEstEnv(t, func(o *Options) { o.Validity = time.Hour })
	c := e.factoryClient("dev-00001")
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	for i, key := range []crypto.Signer{newKey(t), edKey} {
		body := csr(t, key, "dev-00001")
		status, answer := e.post(c, "simpleenroll", body)
		if status != http.StatusOK {
			t.Fatalf("enrolment %d: %d %s", i, status, answer)
		}
		certs := certsOf(t, answer)
		if len(certs) != 1 {
			t.Fatalf("answer has %d certificates, want 1", len(certs))
		}
		got := certs[0]
		if got.Subject.CommonName != "dev-00001" || got.Subject.Organization[0] != pki.Organization {
			t.Errorf("subject %v", got.Subject)
		}
		if life := time.Until(got.NotAfter); life > time.Hour || life < 50*time.Minute {
			t.Errorf("certificate lives %v more, want the configured hour", life)
		}
		if got.CheckSignatureFrom(e.srv.o.CA.Cert()) != nil {
			t.Error("not signed by the issuing CA")
		}
		if !publicKeyEqual(got.PublicKey, key.Public()) {
			t.Error("certificate is not for the CSR's key")
		}
	}
	issued, err := pki.ReadIssued(e.pki, "dev-00001")
	if err != nil || len(issued) != 2 {
		t.Fatalf("issued/dev-00001.pem: %d certificates, %v; want 2", len(issued), err)
	}
	if e.requests("simpleenroll", "ok") != 2 || e.eventCount() != 0 {
		t.Errorf("ok count %v, events %d; want 2 and none", e.requests("simpleenroll", "ok"), e.eventCount())
	}
}

func publicKeyEqual(a, b any) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// TestEnrollRefusals sends each bad request of simpleenroll and checks its status and security event.
func TestEnrollRefusals(t *testing.T) {
	e := newEstEnv(t, nil)
	dev1 := e.factoryClient("dev-00001")
	good := csr(t, newKey(t), "dev-00001")
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err := pki.IssueDevice(e.pki, "plain", pki.P256, 30); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir() // another manufacturer, not in this PKI's manufacturers/
	if err := pki.Init(other, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.IssueFactory(other, pki.FactoryOptions{Manufacturer: "rogue", Count: 1}); err != nil {
		t.Fatal(err)
	}
	expiredCert, expiredKey := expiredIdentity(t, e.pki)
	badSig := csrDER(t, "dev-00001")
	badSig[len(badSig)-3] ^= 0xff
	for _, tt := range []struct {
		name    string
		client  *http.Client
		ctype   string
		body    []byte
		status  int
		verdict string
		dev     string
		detail  string
	}{
		{"no client certificate", e.client("", ""), "", good, 403, EventDenied, "", "needs a client certificate"},
		{"unknown manufacturer", e.client(pki.FactoryPaths(other, "dev-00001")), "", good, 403, EventDenied, "", "not issued by an accepted manufacturer"},
		{"expired identity", e.certClient(expiredCert, expiredKey), "", good, 403, EventDenied, "", "expired"},
		{"device certificate", e.client(pki.DevicePaths(e.pki, "plain")), "", good, 403, EventDenied, "plain", "simpleenroll takes only factory identities"},
		{"CSR for another ID", dev1, "", csr(t, newKey(t), "dev-00002"), 403, EventDenied, "dev-00001", `CSR subject CN "dev-00002" is not the allow-listed device ID`},
		{"RSA key", dev1, "", csr(t, rsaKey, "dev-00001"), 403, EventDenied, "dev-00001", "outside policy"},
		{"P-384 key", dev1, "", csr(t, p384, "dev-00001"), 403, EventDenied, "dev-00001", "ECDSA P-384 outside policy"},
		{"not base64", dev1, "", []byte("%%%%"), 400, EventMalformed, "dev-00001", "not base64"},
		{"not a CSR", dev1, "", []byte(base64.StdEncoding.EncodeToString([]byte("hello"))), 400, EventMalformed, "dev-00001", "not DER PKCS#10"},
		{"bad self-signature", dev1, "", []byte(base64.StdEncoding.EncodeToString(badSig)), 400, EventMalformed, "dev-00001", "self-signature invalid"},
		{"oversized body", dev1, "", make([]byte, MaxBody+1), 413, EventMalformed, "dev-00001", "over 16384 bytes"},
		{"wrong content type", dev1, "text/plain", good, 415, EventMalformed, "dev-00001", "want application/pkcs10"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctype := tt.ctype
			if ctype == "" {
				ctype = "application/pkcs10"
			}
			status, body := e.do(tt.client, http.MethodPost, "simpleenroll", ctype, tt.body)
			e.expectRefusal(status, body, tt.status, tt.verdict, tt.dev, tt.detail)
		})
	}
	if got, _ := pki.ReadIssued(e.pki, "dev-00001"); len(got) != 0 {
		t.Errorf("refusals issued %d certificates", len(got))
	}
	if n := e.requests("simpleenroll", "denied"); n != 7 {
		t.Errorf("denied count %v, want 7", n)
	}
}

// csrDER is a DER CSR of a fresh P-256 key.
func csrDER(t *testing.T, cn string) []byte {
	der, err := base64.StdEncoding.DecodeString(string(csr(t, newKey(t), cn)))
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// expiredIdentity is a factory identity of manufacturer acme, on the allow-list as dev-00009, that expired an
// hour ago.
func expiredIdentity(t *testing.T, dir string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	ca, err := pki.LoadCert(filepath.Join(dir, pki.ManufacturersDir, "acme.crt"))
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := pki.LoadKey(filepath.Join(dir, pki.FactoryDir, "acme-ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(99),
		Subject:   pkix.Name{CommonName: "ACME-00000099", SerialNumber: "ACME-00000099", Organization: []string{"ACME"}},
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	appendAllow(t, dir, "ACME-00000099", "dev-00009")
	return c, key
}

// appendAllow adds {serial, id} to enroll.yaml.
func appendAllow(t *testing.T, dir, serial, id string) {
	t.Helper()
	if err := pki.AppendAllowList(dir, []pki.AllowEntry{{Serial: serial, ID: id}}); err != nil {
		t.Fatal(err)
	}
}

// TestAllowListAndBindings changes enroll.yaml under a running server: an identity taken off the list is
// refused, one moved to another ID is refused (it enrolled as the first, and the binding survives a restart),
// and a new manufacturer's identity is accepted without a restart.
func TestAllowListAndBindings(t *testing.T) {
	e := newEstEnv(t, nil)
	if status, body := e.post(e.factoryClient("dev-00001"), "simpleenroll", csr(t, newKey(t), "dev-00001")); status != 200 {
		t.Fatalf("enrol: %d %s", status, body)
	}
	path := filepath.Join(e.pki, pki.FileEnroll)
	writeAllow(t, path, "ACME-00000001", "dev-00007", "ACME-00000003", "dev-00001")
	status, body := e.post(e.factoryClient("dev-00001"), "simpleenroll", csr(t, newKey(t), "dev-00007"))
	e.expectRefusal(status, body, 403, EventDenied, "dev-00007", `factory identity ACME-00000001: already enrolled as device "dev-00001"`)
	status, body = e.post(e.factoryClient("dev-00002"), "simpleenroll", csr(t, newKey(t), "dev-00002"))
	e.expectRefusal(status, body, 403, EventDenied, "", "ACME-00000002 (issuer \"acme Manufacturer CA\") is not on the enrolment allow-list")
	status, body = e.post(e.factoryClient("dev-00003"), "simpleenroll", csr(t, newKey(t), "dev-00001"))
	e.expectRefusal(status, body, 403, EventDenied, "dev-00001", "was enrolled by another factory identity")

	e.start(nil) // a restart keeps the bindings
	status, body = e.post(e.factoryClient("dev-00001"), "simpleenroll", csr(t, newKey(t), "dev-00007"))
	e.expectRefusal(status, body, 403, EventDenied, "dev-00007", "already enrolled as device")

	// A new manufacturer and its identity, added while the server runs.
	if _, err := pki.IssueFactory(e.pki, pki.FactoryOptions{Manufacturer: "globex", Prefix: "gx", Count: 1}); err != nil {
		t.Fatal(err)
	}
	if status, body := e.post(e.factoryClient("gx-00001"), "simpleenroll", csr(t, newKey(t), "gx-00001")); status != 200 {
		t.Fatalf("new manufacturer's identity: %d %s", status, body)
	}
}

// writeAllow replaces the allow-list with pairs serial, id, ...
func writeAllow(t *testing.T, path string, pairs ...string) {
	t.Helper()
	var b strings.Builder
	for i := 0; i < len(pairs); i += 2 {
		fmt.Fprintf(&b, "- {serial: %q, id: %q}\n", pairs[i], pairs[i+1])
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestReenroll renews an operational certificate with a new key, and refuses a CSR for another ID, a factory
// identity, a revoked and an expired certificate.
func TestReenroll(t *testing.T) {
	e := newEstEnv(t, nil)
	key := newKey(t)
	cert, err := e.srv.o.CA.Issue("dev-00001", key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := e.certClient(cert, key)
	newKey2 := newKey(t)
	status, body := e.post(c, "simplereenroll", csr(t, newKey2, "dev-00001"))
	if status != 200 {
		t.Fatalf("reenrol: %d %s", status, body)
	}
	renewed := certsOf(t, body)[0]
	if renewed.Subject.CommonName != "dev-00001" || !publicKeyEqual(renewed.PublicKey, newKey2.Public()) ||
		renewed.SerialNumber.Cmp(cert.SerialNumber) == 0 {
		t.Fatal("renewed certificate is not a new one for the new key")
	}

	status, body = e.post(c, "simplereenroll", csr(t, newKey(t), "dev-00002"))
	e.expectRefusal(status, body, 403, EventDenied, "dev-00001", "differs from the current certificate's")
	status, body = e.post(e.factoryClient("dev-00001"), "simplereenroll", csr(t, newKey(t), "dev-00001"))
	e.expectRefusal(status, body, 403, EventDenied, "", "is a factory identity")
	status, body = e.post(e.client("", ""), "simplereenroll", csr(t, newKey(t), "dev-00001"))
	e.expectRefusal(status, body, 403, EventDenied, "", "needs a client certificate")

	e.revoked.Store(cert.SerialNumber.Text(16), true)
	status, body = e.post(c, "simplereenroll", csr(t, newKey(t), "dev-00001"))
	e.expectRefusal(status, body, 403, EventDenied, "dev-00001", "is revoked")

	short, err := e.srv.o.CA.Issue("dev-00002", key.Public(), time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, time.Second, "certificate expiry", func() bool { return time.Now().After(short.NotAfter) })
	status, body = e.post(e.certClient(short, key), "simplereenroll", csr(t, newKey(t), "dev-00002"))
	e.expectRefusal(status, body, 403, EventDenied, "dev-00002", "certificate expired")
}

// TestRoutesAndRate checks the unknown route, the wrong method and the rate limit with its Retry-After.
func TestRoutesAndRate(t *testing.T) {
	e := newEstEnv(t, func(o *Options) { o.Rate, o.Burst = 0.01, 3 })
	c := e.client("", "")
	status, body := e.do(c, http.MethodGet, "simpleenroll", "", nil)
	e.expectRefusal(status, body, 405, EventMalformed, "", "method GET, want POST")
	status, body = e.do(c, http.MethodGet, "csrattrs", "", nil)
	e.expectRefusal(status, body, 404, EventMalformed, "", "no EST route")
	if status, _ := e.do(c, http.MethodGet, "cacerts", "", nil); status != 200 {
		t.Fatalf("third request: %d", status)
	}
	req, _ := http.NewRequest(http.MethodGet, e.url+"cacerts", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("fourth request: %d, Retry-After %q; want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if ev := e.lastEvent(); ev.Verdict != EventDenied || !strings.Contains(ev.Detail, "requests per second") {
		t.Errorf("flood event %+v", ev)
	}
	// A self-made certificate, which no route would accept, buys no budget
	// of its own: it is counted with its IP address.
	key := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "fresh"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	self, _ := x509.ParseCertificate(der)
	if status, _ := e.do(e.certClient(self, key), http.MethodGet, "cacerts", "", nil); status != 429 {
		t.Errorf("a self-signed certificate from the same address: %d, want 429", status)
	}
	// Another client (a certificate of a known manufacturer) has its own budget.
	if status, _ := e.do(e.factoryClient("dev-00001"), http.MethodGet, "cacerts", "", nil); status != 200 {
		t.Errorf("another client: %d", status)
	}
	if e.requests("cacerts", "rate_limited") != 2 || e.requests("other", "not_found") != 1 {
		t.Error("refusals not counted by outcome")
	}
}

// TestLimiterBounded checks that the limiter's map stays within its bound and evicts refilled clients first.
func TestLimiterBounded(t *testing.T) {
	l := newLimiter(1, 1, 3)
	now := time.Now()
	for i := range 10 {
		if _, ok := l.allow(fmt.Sprint("c", i), now); !ok {
			t.Fatalf("client %d refused its first request", i)
		}
	}
	if len(l.clients) > 3 {
		t.Fatalf("limiter holds %d clients, bound 3", len(l.clients))
	}
	if _, ok := l.allow("c9", now); ok {
		t.Fatal("client c9's second request within a second allowed")
	}
	if _, ok := l.allow("c9", now.Add(2*time.Second)); !ok {
		t.Fatal("client c9 refused after its bucket refilled")
	}
}
