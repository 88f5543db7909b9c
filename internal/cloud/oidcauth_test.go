package cloud

import (
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/internal/oidc/oidctest"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// oidcBroker is a broker that accepts the tokens of p besides its own.
func oidcBroker(t *testing.T, p *oidctest.Provider) (string, *Broker, *logBuf) {
	t.Helper()
	dir := testPKI(t)
	cfg := testConfig(dir, "")
	cfg.OIDC = p.Config()
	b, logs := startBroker(t, cfg)
	return dir, b, logs
}

// connackOf connects with tok over MQTT 5 and returns the CONNACK code.
func connackOf(t *testing.T, b *Broker, dir, clientID, tok string) byte {
	t.Helper()
	c, err := rawDial(t, b.AppsAddr(), appTLS(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	code, err := c.connect(clientID, "app", tok)
	if err != nil {
		t.Fatalf("connect %s: %v", clientID, err)
	}
	return code
}

// TestOIDCApps: people signed in at an outside provider connect with its
// tokens, read by role, receive their site's telemetry, and cannot take
// the session of a local token's subject; every kind of bad token is
// refused at CONNECT, counted by reason and logged without the token.
func TestOIDCApps(t *testing.T) {
	p := oidctest.New(t)
	p.NewKey(t, "rsa-2026", "RS256")
	p.NewKey(t, "stranger", "ES256")
	p.Rotate("rsa-2026")
	dir, b, logs := oidcBroker(t, p)

	nurse := p.Sign(t, "rsa-2026", p.Claims("nurse", "site1")) // no role: a clinician
	app := connectedApp(t, b, dir, "nurse-tablet", nurse)
	for f, want := range map[string]byte{"telemetry/site1/#": 1, "fhir/site1/#": 1, "security/site1/#": 0x87, "telemetry/site2/#": 0x87} {
		if code, err := app.subscribe(f); err != nil || code != want {
			t.Errorf("OIDC clinician subscribe %s: code %#x err %v, want %#x", f, code, err, want)
		}
	}
	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	wait(t, gw.Publish("telemetry/site1/dev-00001/spo2", 1, false, "97"), "publish")
	if m, err := app.read(); err != nil || m.TopicName != "telemetry/site1/dev-00001/spo2" {
		t.Fatalf("OIDC clinician got %+v %v", m.TopicName, err)
	}

	// The same token over WebSocket (what a browser uses).
	ws := pahoClient(t, "wss://"+b.WSAddr()+"/", appTLS(t, dir), "nurse-browser", "app", nurse, true)
	st := ws.Subscribe("fhir/site1/#", 1, nil)
	wait(t, st, "OIDC clinician subscribe over WebSocket")
	if code := st.(*paho.SubscribeToken).Result()["fhir/site1/#"]; code != 1 {
		t.Errorf("OIDC clinician subscribe over WebSocket: code %#x", code)
	}

	opsClaims := p.Claims("dr.ops", "site1")
	opsClaims["role"] = "operator"
	ops := connectedApp(t, b, dir, "ops-laptop", p.Sign(t, "rsa-2026", opsClaims))
	if code, err := ops.subscribe("security/site1/#"); err != nil || code != 1 {
		t.Errorf("OIDC operator subscribe security/: code %#x err %v", code, err)
	}

	// Local tokens keep working beside the provider's.
	if code := connackOf(t, b, dir, "local-app", mintRole(t, dir, "local-app", pki.RoleOperator, "site1")); code != 0 {
		t.Errorf("local token on a broker with a provider: CONNACK %#x", code)
	}
	// A local token with the provider's subject is another principal.
	if code := connackOf(t, b, dir, "nurse-tablet", mintRole(t, dir, "nurse", "", "site1")); code != packets.ErrBadUsernameOrPassword.Code {
		t.Errorf("local token of sub nurse took the OIDC nurse's client ID: CONNACK %#x", code)
	}

	with := func(change func(map[string]any)) map[string]any {
		c := p.Claims("nurse", "site1")
		change(c)
		return c
	}
	cases := []struct {
		name, reason, tok string
	}{
		{"wrong audience", "audience", p.Sign(t, "rsa-2026", with(func(c map[string]any) { c["aud"] = "the-hr-app" }))},
		{"wrong issuer", "issuer", p.Sign(t, "rsa-2026", with(func(c map[string]any) { c["iss"] = p.Issuer + "-other" }))},
		{"key not in the set", "unknown_key", p.Sign(t, "stranger", p.Claims("nurse", "site1"))},
		{"expired", "expired", p.Sign(t, "rsa-2026", with(func(c map[string]any) { c["exp"] = time.Now().Add(-time.Minute).Unix() }))},
		{"no exp", "missing_claim", p.Sign(t, "rsa-2026", with(func(c map[string]any) { delete(c, "exp") }))},
		{"unknown role", "bad_claims", p.Sign(t, "rsa-2026", with(func(c map[string]any) { c["role"] = "admin" }))},
		{"exporter role", "bad_claims", p.Sign(t, "rsa-2026", with(func(c map[string]any) { c["role"] = pki.RoleExporter }))},
		{"bad site", "bad_claims", p.Sign(t, "rsa-2026", with(func(c map[string]any) { c["sites"] = []string{"site1/#"} }))},
		{"alg none", "bad_signature", oidctest.Unsigned(t, p.Claims("nurse", "site1"))},
		{"HS256 keyed with the public key", "bad_signature", oidctest.SignHMAC(t, p.PublicKeyPEM(t, "rsa-2026"), "rsa-2026", p.Claims("nurse", "site1"))},
	}
	for i, tc := range cases {
		if code := connackOf(t, b, dir, "bad-"+string(rune('a'+i)), tc.tok); code != packets.ErrBadUsernameOrPassword.Code {
			t.Errorf("%s: CONNACK %#x, want 0x86", tc.name, code)
		}
	}
	m, l := scrape(t, b), logs.String()
	for _, tc := range cases {
		if !strings.Contains(m, `vitalgate_cloud_auth_failures_total{kind="app",reason="`+tc.reason+`"}`) {
			t.Errorf("%s: reason %s not counted:\n%s", tc.name, tc.reason, grepLines(m, "auth_failures"))
		}
		if strings.Contains(l, tc.tok) {
			t.Fatalf("%s: the token was logged", tc.name)
		}
	}
	if !strings.Contains(l, `unknown role \"admin\"`) {
		t.Errorf("unknown role not logged:\n%s", grepLines(l, "connect refused"))
	}
}

// TestOIDCKeyTrouble: the provider rotates its key (the new one is taken
// at once, the removed one refused from then on); then its JWKS endpoint
// serves garbage and goes down: logged and counted, the cached key keeps
// signing people in. A revoked jti closes the session as for local tokens.
func TestOIDCKeyTrouble(t *testing.T) {
	p := oidctest.New(t)
	p.NewKey(t, "k1", "ES256")
	p.NewKey(t, "k2", "EdDSA")
	p.Rotate("k1")
	dir, b, logs := oidcBroker(t, p)
	old := p.Sign(t, "k1", p.Claims("nurse", "site1"))
	if code := connackOf(t, b, dir, "c1", old); code != 0 {
		t.Fatalf("k1 token: CONNACK %#x", code)
	}
	p.Rotate("k2")
	fresh := p.Sign(t, "k2", p.Claims("nurse", "site1"))
	if code := connackOf(t, b, dir, "c2", fresh); code != 0 {
		t.Fatalf("token of the new key: CONNACK %#x", code)
	}
	if code := connackOf(t, b, dir, "c3", old); code != packets.ErrBadUsernameOrPassword.Code {
		t.Fatalf("token of the removed key: CONNACK %#x, want 0x86", code)
	}

	for _, mode := range []oidctest.Mode{oidctest.Garbage, oidctest.Down} {
		p.SetMode(mode)
		before := gauge(t, b, "vitalgate_cloud_oidc_jwks_failures_total")
		testutil.Eventually(t, 20*time.Second, "a failed fetch counted", func() bool {
			return gauge(t, b, "vitalgate_cloud_oidc_jwks_failures_total") > before
		})
		if code := connackOf(t, b, dir, "c4", p.Sign(t, "k2", p.Claims("nurse", "site1"))); code != 0 {
			t.Fatalf("mode %d: cached key refused: CONNACK %#x", mode, code)
		}
	}
	if !strings.Contains(logs.String(), "oidc: fetching the provider's key set failed") {
		t.Error("failed fetch not logged")
	}
	if gauge(t, b, "vitalgate_cloud_oidc_jwks_keys") != 1 {
		t.Error("the cached key is not counted")
	}

	claims := p.Claims("nurse", "site1")
	jti := claims["jti"].(string)
	tok := p.Sign(t, "k2", claims)
	live := pahoClient(t, "ssl://"+b.AppsAddr(), appTLS(t, dir), "c5", "app", tok, true)
	start := time.Now()
	if err := pki.RevokeToken(dir, jti); err != nil {
		t.Fatal(err)
	}
	awaitClosed(t, "the OIDC token's session", start, live)
	if code := connackOf(t, b, dir, "c6", tok); code != packets.ErrNotAuthorized.Code {
		t.Fatalf("revoked OIDC token: CONNACK %#x, want 0x87", code)
	}
}

// TestOIDCConfig: the provider's issuer may not be the local tokens', and
// its keys are validated with the broker's.
func TestOIDCConfig(t *testing.T) {
	cfg := testConfig(t.TempDir(), "")
	cfg.OIDC.Issuer, cfg.OIDC.JWKSURL = pki.TokenIssuer, "http://idp/certs"
	err := cfg.Validate()
	for _, want := range []string{"oidc.issuer: \"vitalgate-pki\" is the issuer", "oidc.jwks_url", "oidc.audience: required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v, want %q", err, want)
		}
	}
}
