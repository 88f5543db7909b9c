// Package oidctest is an OpenID Connect provider for tests: an HTTPS JWKS
// endpoint on 127.0.0.1 whose keys can be rotated, taken down or made to
// serve garbage, and tokens signed with github.com/go-jose/go-jose (an
// implementation independent of the verifier's golang-jwt).
package oidctest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"

	"github.com/vitalgate/vitalgate/internal/oidc"
)

// Mode is what the JWKS endpoint answers.
type Mode int

// Modes of the JWKS endpoint.
const (
	Serve   Mode = iota // the served keys
	Down                // 503 Service Unavailable
	Garbage             // 200 with a body that is not a key set
	BadKey              // 200 with a key set whose one key is malformed
	Endless             // 200 with a body that never ends
)

// Audience is the audience of the provider's tokens for the broker.
const Audience = "vitalgate-broker"

// Provider is a test identity provider. Create it with [New].
type Provider struct {
	// Issuer is the iss of its tokens; JWKSURL its key set; CAFile the
	// PEM file of the certificate that JWKSURL serves.
	Issuer, JWKSURL, CAFile string

	mu      sync.Mutex
	keys    map[string]key // every key made, by kid
	served  []string       // kids in the key set, in order
	mode    Mode
	fetches atomic.Int64
}

type key struct {
	alg    jose.SignatureAlgorithm
	signer crypto.Signer
}

// New starts the provider's HTTPS server (closed at the end of the test).
func New(t testing.TB) *Provider {
	t.Helper()
	p := &Provider{keys: map[string]key{}}
	srv := httptest.NewTLSServer(http.HandlerFunc(p.serve))
	t.Cleanup(srv.Close)
	p.Issuer = srv.URL + "/realms/clinic"
	p.JWKSURL = srv.URL + "/realms/clinic/certs"
	p.CAFile = filepath.Join(t.TempDir(), "idp-ca.pem")
	crt := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(p.CAFile, crt, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Config is a broker configuration for the provider: its issuer, JWKS URL
// and CA, [Audience], and refresh intervals of a second (the least allowed).
func (p *Provider) Config() oidc.Config {
	return oidc.Config{Issuer: p.Issuer, JWKSURL: p.JWKSURL, JWKSCA: p.CAFile, Audience: Audience,
		Refresh: time.Second, RefreshUnknown: time.Second}
}

func (p *Provider) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/realms/clinic/certs" {
		http.NotFound(w, r)
		return
	}
	p.fetches.Add(1)
	p.mu.Lock()
	mode := p.mode
	var set jose.JSONWebKeySet
	for _, kid := range p.served {
		k := p.keys[kid]
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.signer.Public(), KeyID: kid, Algorithm: string(k.alg), Use: "sig"})
	}
	p.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch mode {
	case Down:
		http.Error(w, "maintenance", http.StatusServiceUnavailable)
	case Garbage:
		_, _ = w.Write([]byte("<html>the provider's login page, not a key set</html>"))
	case BadKey:
		_, _ = w.Write([]byte(`{"keys":[{"kty":"EC","crv":"P-256","kid":"bad","x":"AAAA","y":"!!"}]}`))
	case Endless:
		_, _ = w.Write([]byte(`{"keys":[`))
		chunk := []byte(strings.Repeat(`{"kty":"oct","k":"AAAA"},`, 1000))
		for i := 0; i < 1000 && r.Context().Err() == nil; i++ { // 25 MB, or until the client hangs up
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	default:
		_ = json.NewEncoder(w).Encode(set)
	}
}

// NewKey makes a key of alg ("RS256", "ES256" or "EdDSA") with ID kid, not
// yet in the key set.
func (p *Provider) NewKey(t testing.TB, kid, alg string) {
	t.Helper()
	var s crypto.Signer
	var err error
	switch alg {
	case "RS256":
		s, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ES256":
		s, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "EdDSA":
		_, s, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("oidctest: no algorithm %q", alg)
	}
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.keys[kid] = key{alg: jose.SignatureAlgorithm(alg), signer: s}
}

// Rotate sets the key set to the keys kids (made with NewKey), in order.
func (p *Provider) Rotate(kids ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.served = kids
}

// SetMode sets what the endpoint answers.
func (p *Provider) SetMode(m Mode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = m
}

// Fetches is the number of requests for the key set so far.
func (p *Provider) Fetches() int64 { return p.fetches.Load() }

// Claims returns the claims of a token for sub: iss, aud, iat, exp in an
// hour, a jti, and sites. Change them before [Provider.Sign].
func (p *Provider) Claims(sub string, sites ...string) map[string]any {
	now := time.Now()
	return map[string]any{"iss": p.Issuer, "aud": []string{Audience, "account"}, "sub": sub, "iat": now.Unix(),
		"exp": now.Add(time.Hour).Unix(), "jti": "idp-" + sub + "-" + base64.RawURLEncoding.EncodeToString([]byte(now.String()))[:12],
		"sites": sites}
}

// Sign signs claims with the key kid (made with NewKey, in the key set or
// not), naming kid in the header.
func (p *Provider) Sign(t testing.TB, kid string, claims map[string]any) string {
	t.Helper()
	p.mu.Lock()
	k, ok := p.keys[kid]
	p.mu.Unlock()
	if !ok {
		t.Fatalf("oidctest: no key %q", kid)
	}
	return sign(t, jose.SigningKey{Algorithm: k.alg, Key: k.signer}, kid, claims)
}

// SignHMAC signs claims with HS256 and secret, naming kid: what an attacker
// makes of a public key (the confusion of an RSA public key with an HMAC
// secret).
func SignHMAC(t testing.TB, secret []byte, kid string, claims map[string]any) string {
	t.Helper()
	return sign(t, jose.SigningKey{Algorithm: jose.HS256, Key: secret}, kid, claims)
}

// Unsigned is claims as a token with alg "none".
func Unsigned(t testing.TB, claims map[string]any) string {
	t.Helper()
	body, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc(body) + "."
}

// PublicKeyPEM is the PEM of key kid's public key, as an attacker could
// fetch it.
func (p *Provider) PublicKeyPEM(t testing.TB, kid string) []byte {
	t.Helper()
	p.mu.Lock()
	k := p.keys[kid]
	p.mu.Unlock()
	der, err := x509.MarshalPKIXPublicKey(k.signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func sign(t testing.TB, sk jose.SigningKey, kid string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid)
	s, err := jose.NewSigner(sk, opts)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := josejwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
