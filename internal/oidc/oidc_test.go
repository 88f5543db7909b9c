package oidc_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/vitalgate/vitalgate/internal/oidc"
	"github.com/vitalgate/vitalgate/internal/oidc/oidctest"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

var roles = []string{"operator", "clinician"}

// refreshErrors records what the verifier reports of failed fetches.
type refreshErrors struct {
	mu   sync.Mutex
	errs []string
}

func (r *refreshErrors) add(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, err.Error())
}

func (r *refreshErrors) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.errs)
}

func (r *refreshErrors) last() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errs) == 0 {
		return ""
	}
	return r.errs[len(r.errs)-1]
}

func newVerifier(t *testing.T, cfg oidc.Config) (*oidc.Verifier, *refreshErrors) {
	t.Helper()
	re := &refreshErrors{}
	v, err := oidc.New(cfg, oidc.Options{Roles: roles, OnRefreshError: re.add})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return v, re
}

func verify(v *oidc.Verifier, tok string) (*oidc.Claims, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return v.Verify(ctx, tok)
}

// TestVerify: tokens of each algorithm verify and give their subject, sites
// and role; every kind of bad token is refused with its own error.
func TestVerify(t *testing.T) {
	p := oidctest.New(t)
	p.NewKey(t, "rsa1", "RS256")
	p.NewKey(t, "ec1", "ES256")
	p.NewKey(t, "ed1", "EdDSA")
	p.NewKey(t, "stranger", "ES256") // never in the key set
	p.Rotate("rsa1", "ec1", "ed1")
	cfg := p.Config()
	cfg.RoleClaim = "realm_access.roles" // a nested claim, as Keycloak puts it
	v, _ := newVerifier(t, cfg)

	for _, kid := range []string{"rsa1", "ec1", "ed1"} {
		c := p.Claims("nurse-"+kid, "clinic-a", "clinic-b")
		c["realm_access"] = map[string]any{"roles": []string{"offline_access", "operator"}}
		got, err := verify(v, p.Sign(t, kid, c))
		if err != nil {
			t.Fatalf("%s: %v", kid, err)
		}
		if got.Subject != "nurse-"+kid || !slices.Equal(got.Sites, []string{"clinic-a", "clinic-b"}) || got.Role != "operator" ||
			got.ID == "" || time.Until(got.Expires) < 50*time.Minute {
			t.Errorf("%s: claims %+v", kid, got)
		}
	}

	with := func(change func(map[string]any)) map[string]any {
		c := p.Claims("nurse", "clinic-a")
		change(c)
		return c
	}
	rsaPEM := p.PublicKeyPEM(t, "rsa1")
	for _, tc := range []struct {
		name string
		tok  string
		want error
	}{
		{"wrong issuer", p.Sign(t, "ec1", with(func(c map[string]any) { c["iss"] = "https://evil.example/realms/clinic" })), jwt.ErrTokenInvalidIssuer},
		{"wrong audience", p.Sign(t, "ec1", with(func(c map[string]any) { c["aud"] = "another-app" })), jwt.ErrTokenInvalidAudience},
		{"no audience", p.Sign(t, "ec1", with(func(c map[string]any) { delete(c, "aud") })), jwt.ErrTokenRequiredClaimMissing},
		{"expired", p.Sign(t, "ec1", with(func(c map[string]any) { c["exp"] = time.Now().Add(-time.Second).Unix() })), jwt.ErrTokenExpired},
		{"no exp", p.Sign(t, "ec1", with(func(c map[string]any) { delete(c, "exp") })), jwt.ErrTokenRequiredClaimMissing},
		{"issued in the future", p.Sign(t, "ec1", with(func(c map[string]any) { c["iat"] = time.Now().Add(time.Hour).Unix() })), jwt.ErrTokenUsedBeforeIssued},
		{"key not in the set", p.Sign(t, "stranger", p.Claims("nurse", "clinic-a")), oidc.ErrUnknownKey},
		{"alg none", oidctest.Unsigned(t, p.Claims("nurse", "clinic-a")), jwt.ErrTokenSignatureInvalid},
		{"HS256 with the RSA public key", oidctest.SignHMAC(t, rsaPEM, "rsa1", p.Claims("nurse", "clinic-a")), jwt.ErrTokenSignatureInvalid},
		{"unknown role", p.Sign(t, "ec1", with(func(c map[string]any) { c["realm_access"] = map[string]any{"roles": "admin"} })), oidc.ErrClaims},
		{"exporter role", p.Sign(t, "ec1", with(func(c map[string]any) { c["realm_access"] = map[string]any{"roles": "exporter"} })), oidc.ErrClaims},
		{"role a number", p.Sign(t, "ec1", with(func(c map[string]any) { c["realm_access"] = map[string]any{"roles": 7} })), oidc.ErrClaims},
		{"no sites", p.Sign(t, "ec1", with(func(c map[string]any) { delete(c, "sites") })), oidc.ErrClaims},
		{"sites not strings", p.Sign(t, "ec1", with(func(c map[string]any) { c["sites"] = []any{"a", 1} })), oidc.ErrClaims},
		{"no subject", p.Sign(t, "ec1", with(func(c map[string]any) { delete(c, "sub") })), oidc.ErrClaims},
		{"jti a number", p.Sign(t, "ec1", with(func(c map[string]any) { c["jti"] = 5 })), oidc.ErrClaims},
		{"not a JWT", "not.a.jwt", jwt.ErrTokenMalformed},
	} {
		_, err := verify(v, tc.tok)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.want)
		}
	}

	// A token signed by a stranger's key under the kid of a served key.
	forged := resign(t, p, "ec1", "stranger")
	if _, err := verify(v, forged); !errors.Is(err, jwt.ErrTokenSignatureInvalid) {
		t.Errorf("stranger's signature under kid ec1: %v", err)
	}
}

// resign is a token whose header names kid but which the key signer signed.
func resign(t *testing.T, p *oidctest.Provider, kid, signer string) string {
	t.Helper()
	genuine := strings.Split(p.Sign(t, kid, p.Claims("nurse", "clinic-a")), ".")
	other := strings.Split(p.Sign(t, signer, p.Claims("nurse", "clinic-a")), ".")
	// Same claims are not needed: the signature covers header and body.
	return genuine[0] + "." + genuine[1] + "." + other[2]
}

// TestClaimsShapes: sites as a space- or comma-separated string, a role as
// a plain string, an absent role, claims under other names.
func TestClaimsShapes(t *testing.T) {
	p := oidctest.New(t)
	p.NewKey(t, "k", "ES256")
	p.Rotate("k")
	cfg := p.Config()
	cfg.SubjectClaim, cfg.SitesClaim, cfg.RoleClaim = "preferred_username", "https://vitalgate.example/sites", "vg_role"
	v, _ := newVerifier(t, cfg)
	for _, tc := range []struct {
		sites any
		role  any
		want  []string
		role2 string
	}{
		{"clinic-a clinic-b", "clinician", []string{"clinic-a", "clinic-b"}, "clinician"},
		{"clinic-a,clinic-b", nil, []string{"clinic-a", "clinic-b"}, ""},
		{[]string{"clinic-a"}, []string{"staff"}, []string{"clinic-a"}, ""},
		{"clinic-a", []string{"clinician", "operator"}, []string{"clinic-a"}, "operator"},
	} {
		c := p.Claims("ignored", "x")
		delete(c, "sites")
		c["preferred_username"] = "dr.lee@hospital.example"
		c["https://vitalgate.example/sites"] = tc.sites
		if tc.role != nil {
			c["vg_role"] = tc.role
		}
		got, err := verify(v, p.Sign(t, "k", c))
		if err != nil {
			t.Fatalf("%v/%v: %v", tc.sites, tc.role, err)
		}
		if got.Subject != "dr.lee@hospital.example" || !slices.Equal(got.Sites, tc.want) || got.Role != tc.role2 {
			t.Errorf("%v/%v: %+v", tc.sites, tc.role, got)
		}
	}
	c := p.Claims("x", "clinic-a")
	delete(c, "jti")
	c["preferred_username"], c["https://vitalgate.example/sites"] = "dr.lee", "clinic-a"
	if got, err := verify(v, p.Sign(t, "k", c)); err != nil || got.ID != "" {
		t.Errorf("token without jti: %+v %v", got, err)
	}
}

// TestRotation: a token signed by a new key is accepted at once (its
// unknown kid makes the verifier fetch the key set again), and the key the
// provider removed is refused from that fetch on. Unknown kids cause at
// most one fetch per refresh_unknown.
func TestRotation(t *testing.T) {
	p := oidctest.New(t)
	for _, kid := range []string{"k1", "k2", "k3"} {
		p.NewKey(t, kid, "RS256")
	}
	p.Rotate("k1")
	cfg := p.Config()
	cfg.Refresh = time.Hour // only unknown kids cause fetches here
	v, _ := newVerifier(t, cfg)
	old := p.Sign(t, "k1", p.Claims("nurse", "clinic-a"))
	if _, err := verify(v, old); err != nil {
		t.Fatal(err)
	}
	p.Rotate("k2")
	if _, err := verify(v, p.Sign(t, "k2", p.Claims("nurse", "clinic-a"))); err != nil {
		t.Fatalf("new key: %v", err)
	}
	if _, err := verify(v, old); !errors.Is(err, oidc.ErrUnknownKey) {
		t.Fatalf("removed key: %v, want ErrUnknownKey", err)
	}
	if v.Keys() != 1 {
		t.Errorf("%d keys cached, want 1", v.Keys())
	}

	// Made-up kids: one fetch per refresh_unknown (1 s) at most.
	before := p.Fetches()
	start := time.Now()
	for i := 0; i < 20; i++ {
		_, _ = verify(v, p.Sign(t, "k3", p.Claims("nurse", "clinic-a")))
	}
	if n, limit := p.Fetches()-before, int64(time.Since(start)/time.Second)+2; n > limit {
		t.Errorf("20 tokens with an unknown kid made %d fetches in %s, want at most %d", n, time.Since(start), limit)
	}
}

// TestProviderTrouble: after the first fetch the endpoint goes down, serves
// garbage, a malformed key or a body that never ends: each failed refresh
// is reported, the cached keys keep verifying, and the next good key set
// is picked up.
func TestProviderTrouble(t *testing.T) {
	p := oidctest.New(t)
	p.NewKey(t, "k1", "ES256")
	p.NewKey(t, "k2", "EdDSA")
	p.Rotate("k1")
	v, re := newVerifier(t, p.Config())
	tok := p.Sign(t, "k1", p.Claims("nurse", "clinic-a"))
	for _, mode := range []oidctest.Mode{oidctest.Down, oidctest.Garbage, oidctest.BadKey, oidctest.Endless} {
		p.SetMode(mode)
		n := re.count()
		testutil.Eventually(t, 20*time.Second, "a failed refresh reported", func() bool { return re.count() > n })
		if !strings.Contains(re.last(), p.JWKSURL) {
			t.Errorf("mode %d: report %q does not name the URL", mode, re.last())
		}
		if mode == oidctest.Endless && !strings.Contains(re.last(), "key set larger than") {
			t.Errorf("endless key set: report %q", re.last())
		}
		if _, err := verify(v, tok); err != nil {
			t.Fatalf("mode %d: cached key refused: %v", mode, err)
		}
	}
	p.SetMode(oidctest.Serve)
	p.Rotate("k1", "k2")
	testutil.Eventually(t, 20*time.Second, "the next key set", func() bool { return v.Keys() == 2 })
	if _, err := verify(v, p.Sign(t, "k2", p.Claims("nurse", "clinic-a"))); err != nil {
		t.Fatal(err)
	}
}

// TestProviderDownAtStart: New does not fail while the provider is down;
// tokens are refused until a fetch succeeds.
func TestProviderDownAtStart(t *testing.T) {
	p := oidctest.New(t)
	p.NewKey(t, "k1", "ES256")
	p.Rotate("k1")
	p.SetMode(oidctest.Down)
	v, re := newVerifier(t, p.Config())
	if re.count() == 0 {
		t.Error("failed first fetch not reported")
	}
	tok := p.Sign(t, "k1", p.Claims("nurse", "clinic-a"))
	if _, err := verify(v, tok); !errors.Is(err, oidc.ErrUnknownKey) {
		t.Fatalf("with no key set: %v", err)
	}
	p.SetMode(oidctest.Serve)
	testutil.Eventually(t, 20*time.Second, "the key set fetched", func() bool {
		_, err := verify(v, tok)
		return err == nil
	})
}

func TestValidate(t *testing.T) {
	good := oidc.Config{Issuer: "https://idp.example/realms/x", JWKSURL: "https://idp.example/certs", Audience: "vitalgate"}
	if errs := good.Validate(); len(errs) != 0 {
		t.Fatal(errs)
	}
	if errs := (oidc.Config{}).Validate(); len(errs) != 0 || (oidc.Config{}).Enabled() {
		t.Fatal("an empty section is off and valid")
	}
	for _, tc := range []struct {
		change func(*oidc.Config)
		want   string
	}{
		{func(c *oidc.Config) { c.Issuer = "" }, "oidc.issuer: required"},
		{func(c *oidc.Config) { c.Audience = "" }, "oidc.audience: required"},
		{func(c *oidc.Config) { c.JWKSURL = "" }, "oidc.jwks_url: required"},
		{func(c *oidc.Config) { c.JWKSURL = "http://idp.example/certs" }, "not an https:// URL"},
		{func(c *oidc.Config) { c.Refresh = time.Millisecond }, "oidc.refresh: 1ms outside 1s..24h"},
		{func(c *oidc.Config) { c.RefreshUnknown = 48 * time.Hour }, "oidc.refresh_unknown: 48h0m0s outside 1s..24h"},
	} {
		c := good
		tc.change(&c)
		errs := c.Validate()
		if len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.want) {
			t.Errorf("got %v, want %q", errs, tc.want)
		}
	}
	if _, err := oidc.New(oidc.Config{Issuer: "https://x", JWKSURL: "https://x/k", Audience: "a", JWKSCA: "/nonexistent"}, oidc.Options{}); err == nil {
		t.Error("a missing jwks_ca file was accepted")
	}
}
