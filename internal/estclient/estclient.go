// Package estclient is a client of Enrollment over Secure Transport (RFC
// 7030): it fetches the CA certificates (cacerts), enrols a new key with a
// factory identity (simpleenroll) and renews with the current operational
// certificate (simplereenroll).
//
// Requests go over HTTPS to the EST server, whose certificate must chain to
// the deployment's trust anchor (ca.crt). A CSR is base64 DER PKCS#10; an
// answer is base64 PKCS#7 certs-only, decoded with
// github.com/smallstep/pkcs7. An answer other than 200 is an error naming
// the HTTP status and the server's text.
package estclient

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/smallstep/pkcs7"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// The EST operations (RFC 7030 section 3.2.2), under /.well-known/est.
const (
	OpCACerts        = "cacerts"
	OpSimpleEnroll   = "simpleenroll"
	OpSimpleReenroll = "simplereenroll"
)

// WellKnown is the path prefix of the EST operations.
const WellKnown = "/.well-known/est"

// Bounds of what the client reads from a server.
const (
	MaxAnswer    = 64 << 10 // bytes of a 200 answer (base64 PKCS#7)
	MaxErrorText = 512      // bytes of an error answer quoted in the error
)

// DefaultTimeout bounds one request: connection, TLS handshake and answer.
const DefaultTimeout = 15 * time.Second

// StatusError is an answer other than 200 OK.
type StatusError struct {
	Op         string // cacerts, simpleenroll, simplereenroll
	Status     int    // HTTP status code
	Text       string // the server's text, at most MaxErrorText bytes, trimmed
	RetryAfter string // the Retry-After header (202, 429, 503), if any
}

func (e *StatusError) Error() string {
	s := fmt.Sprintf("est %s: HTTP %d %s", e.Op, e.Status, http.StatusText(e.Status))
	if e.Text != "" {
		s += ": " + e.Text
	}
	if e.RetryAfter != "" {
		s += " (retry after " + e.RetryAfter + ")"
	}
	return s
}

// Client talks to one EST server. It is safe for concurrent use.
type Client struct {
	base    string // https://host:port/.well-known/est (or a label below it)
	host    string // server name checked in the server's certificate
	roots   *x509.CertPool
	timeout time.Duration
}

// New returns a client of the EST server at rawURL, an https URL with or
// without the path (default /.well-known/est), whose certificate must chain
// to roots. timeout bounds each request (0: DefaultTimeout).
func New(rawURL string, roots *x509.CertPool, timeout time.Duration) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("est url %q: %w", rawURL, err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("est url %q: want https://host:port", rawURL)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("est url %q: no query, fragment or user info", rawURL)
	}
	if roots == nil {
		return nil, errors.New("est client: no trust anchor for the server")
	}
	path := strings.TrimSuffix(u.EscapedPath(), "/")
	if path == "" {
		path = WellKnown
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Client{base: "https://" + u.Host + path, host: u.Hostname(), roots: roots, timeout: timeout}, nil
}

// URL is the URL of operation op.
func (c *Client) URL(op string) string { return c.base + "/" + op }

// CACerts returns the CA certificates the server distributes (the issuing
// CA and the device CA).
func (c *Client) CACerts(ctx context.Context) ([]*x509.Certificate, error) {
	return c.do(ctx, OpCACerts, nil, nil)
}

// SimpleEnroll sends csr (DER PKCS#10) authenticated with the factory
// identity and returns the certificates of the answer (the operational
// certificate first when the server sends several).
func (c *Client) SimpleEnroll(ctx context.Context, csr []byte, factory tls.Certificate) ([]*x509.Certificate, error) {
	return c.do(ctx, OpSimpleEnroll, csr, &factory)
}

// SimpleReenroll sends csr (DER PKCS#10, same subject, a new key allowed)
// authenticated with the current operational certificate and returns the
// certificates of the answer.
func (c *Client) SimpleReenroll(ctx context.Context, csr []byte, current tls.Certificate) ([]*x509.Certificate, error) {
	return c.do(ctx, OpSimpleReenroll, csr, &current)
}

// do runs one operation: a GET without csr, a POST of base64 csr with it,
// presenting id as the TLS client certificate when not nil.
func (c *Client) do(ctx context.Context, op string, csr []byte, id *tls.Certificate) ([]*x509.Certificate, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: c.roots, ServerName: c.host}
	if id != nil {
		// Always present the identity: the server's list of acceptable CAs
		// may not name a manufacturer CA, and the route decides.
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return id, nil }
	}
	tr := &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true, ForceAttemptHTTP2: false}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: c.timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	method, body := http.MethodGet, io.Reader(nil)
	if csr != nil {
		method, body = http.MethodPost, strings.NewReader(base64.StdEncoding.EncodeToString(csr))
	}
	req, err := http.NewRequestWithContext(ctx, method, c.URL(op), body)
	if err != nil {
		return nil, fmt.Errorf("est %s: %w", op, err)
	}
	if csr != nil {
		req.Header.Set("Content-Type", "application/pkcs10")
		req.Header.Set("Content-Transfer-Encoding", "base64")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("est %s: %w", op, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		text, _ := io.ReadAll(io.LimitReader(resp.Body, MaxErrorText))
		return nil, &StatusError{Op: op, Status: resp.StatusCode, Text: strings.TrimSpace(strings.ToValidUTF8(string(text), "?")),
			RetryAfter: resp.Header.Get("Retry-After")}
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswer+1))
	if err != nil {
		return nil, fmt.Errorf("est %s: read answer: %w", op, err)
	}
	if len(b) > MaxAnswer {
		return nil, fmt.Errorf("est %s: answer over %d bytes", op, MaxAnswer)
	}
	certs, err := DecodeCerts(b)
	if err != nil {
		return nil, fmt.Errorf("est %s: %w", op, err)
	}
	return certs, nil
}

// DecodeCerts decodes a base64 PKCS#7 certs-only message (line breaks
// allowed) into its certificates.
func DecodeCerts(b64 []byte) ([]*x509.Certificate, error) {
	clean := bytes.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == ' ' || r == '\t' {
			return -1
		}
		return r
	}, b64)
	der, err := base64.StdEncoding.DecodeString(string(clean))
	if err != nil {
		return nil, fmt.Errorf("answer is not base64: %w", err)
	}
	p7, err := pkcs7.Parse(der)
	if err != nil {
		return nil, fmt.Errorf("answer is not PKCS#7: %w", err)
	}
	if len(p7.Certificates) == 0 {
		return nil, errors.New("answer holds no certificate")
	}
	return p7.Certificates, nil
}

// NewKey returns a fresh private key of alg (P-256 or Ed25519).
func NewKey(alg pki.KeyAlg) (crypto.Signer, error) {
	switch alg {
	case "", pki.P256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case pki.Ed25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, fmt.Errorf("unknown key algorithm %q (want p256 or ed25519)", string(alg))
}

// NewCSR returns a fresh key of alg and a DER PKCS#10 request for it with
// subject CN = id.
func NewCSR(id string, alg pki.KeyAlg) (csr []byte, key crypto.Signer, err error) {
	key, err = NewKey(alg)
	if err != nil {
		return nil, nil, err
	}
	csr, err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate request for %s: %w", id, err)
	}
	return csr, key, nil
}

// KeyPair makes the TLS identity of an enrolled device from its key, the
// certificates of an enrolment answer and the CA certificates (CACerts):
// the certificate for key, followed by the CA certificate that issued it
// (the issuing CA, which a gateway that knows only the device CA needs).
func KeyPair(key crypto.Signer, issued, cas []*x509.Certificate) (tls.Certificate, error) {
	var leaf *x509.Certificate
	for _, c := range issued {
		if pub, ok := c.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); ok && pub.Equal(key.Public()) {
			leaf = c
			break
		}
	}
	if leaf == nil {
		return tls.Certificate{}, errors.New("enrolment answer holds no certificate for the requested key")
	}
	kp := tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	for _, ca := range append(issued, cas...) {
		if ca != leaf && ca.IsCA && bytes.Equal(ca.RawSubject, leaf.RawIssuer) && leaf.CheckSignatureFrom(ca) == nil {
			if !bytes.Equal(ca.RawSubject, ca.RawIssuer) { // not a root
				kp.Certificate = append(kp.Certificate, ca.Raw)
			}
			break
		}
	}
	return kp, nil
}
