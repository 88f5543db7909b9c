package cloud

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	pahopk "github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/golang-jwt/jwt/v5"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

func TestConfigValidateReportsEverything(t *testing.T) {
	c := Default()
	c.PKI = ""
	c.Listen = "nope"
	c.Apps = "127.0.0.1:9000"
	c.WS = "127.0.0.1:9000"
	c.MaxPacket = 10
	c.MaxInflight = 0
	c.SessionExpiry = 0
	err := c.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, field := range []string{"pki:", "listen:", "ws:", "max_packet:", "max_inflight:", "session_expiry:"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error does not name %s: %v", field, err)
		}
	}
	if err := Default().Validate(); err != nil {
		t.Errorf("default config invalid: %v", err)
	}
}

func TestDeviceCertRefusedOnGatewayListener(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, ""))

	// TLS 1.3 clients finish their side of the handshake before the server
	// judges the certificate, so the refusal shows on the first read.
	c, err := rawDial(t, b.GatewayAddr(), deviceTLS(t, dir))
	if err == nil {
		_, err = c.connect("dev-00001", "", "")
	}
	if err == nil {
		t.Fatal("device certificate accepted on the gateway listener")
	}
	testutil.Eventually(t, waitFor, "auth failure counted", func() bool {
		return strings.Contains(scrape(t, b), `vitalgate_cloud_auth_failures_total{kind="gateway",reason="untrusted_cert"} 1`)
	})

	// No client certificate at all.
	if c, err := rawDial(t, b.GatewayAddr(), appTLS(t, dir)); err == nil {
		if _, err := c.connect("gw1", "", ""); err == nil {
			t.Fatal("connection without a client certificate accepted")
		}
	}

	// The app listener does not take gateways' certificates as credentials.
	c, err = rawDial(t, b.AppsAddr(), gatewayTLS(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	if code, err := c.connect("gw1", "", ""); err != nil || code != packets.ErrBadUsernameOrPassword.Code {
		t.Fatalf("gateway cert on the app listener: code %#x err %v", code, err)
	}
}

func TestGatewayPublishesOnlyUnderItsSite(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, ""))

	app := pahoClient(t, "ssl://"+b.AppsAddr(), appTLS(t, dir), "app1", "app", mint(t, dir, "site1", "site2"), true)
	in := newInbox()
	st := app.Subscribe("telemetry/#", 1, nil) // refused: wildcard site
	wait(t, st, "subscribe telemetry/#")
	if code := st.(*paho.SubscribeToken).Result()["telemetry/#"]; code != 0x80 {
		t.Fatalf("telemetry/# granted %#x to an app", code)
	}
	wait(t, app.Subscribe("telemetry/site1/#", 1, in.handler), "subscribe site1")
	wait(t, app.Subscribe("telemetry/site2/#", 1, in.handler), "subscribe site2")
	wait(t, app.Subscribe("gateways/site1/#", 1, in.handler), "subscribe gateways")

	// The client ID must be the certificate's gateway ID.
	c, err := rawDial(t, b.GatewayAddr(), gatewayTLS(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	if code, err := c.connect("gw2", "", ""); err != nil || code != packets.ErrBadUsernameOrPassword.Code {
		t.Fatalf("wrong client id: code %#x err %v", code, err)
	}

	gw, err := rawDial(t, b.GatewayAddr(), gatewayTLS(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	if code, err := gw.connect("gw1", "", ""); err != nil || code != 0 {
		t.Fatalf("gateway connect: code %#x err %v", code, err)
	}
	cases := []struct {
		topic string
		code  byte
	}{
		{"telemetry/site1/dev-00001/spo2", 0},
		{"security/site1/gw1", 0},
		{"gateways/site1/gw1/status", 0},
		{"telemetry/site2/dev-00001/spo2", packets.ErrNotAuthorized.Code},
		{"security/site2/gw1", packets.ErrNotAuthorized.Code},
		{"security/site1/gw2", packets.ErrNotAuthorized.Code},
		{"gateways/site1/gw2/status", packets.ErrNotAuthorized.Code},
		{"elsewhere/site1/x", packets.ErrNotAuthorized.Code},
		{"telemetry/site1", packets.ErrNotAuthorized.Code},
	}
	for _, tc := range cases {
		code, err := gw.publish(tc.topic, []byte(tc.topic))
		if err != nil || code != tc.code {
			t.Errorf("publish %s: code %#x err %v, want %#x", tc.topic, code, err, tc.code)
		}
	}
	// Two deliveries, in either order: the app's paho client runs its
	// handlers concurrently (SetOrderMatters(false)).
	got := []string{in.next(t).Topic(), in.next(t).Topic()}
	slices.Sort(got)
	if want := []string{"gateways/site1/gw1/status", "telemetry/site1/dev-00001/spo2"}; !slices.Equal(got, want) {
		t.Fatalf("deliveries on %v, want %v", got, want)
	}
	// Nothing refused reached the app (site2 is in its token).
	if code, _ := gw.publish("telemetry/site1/probe/x", nil); code != 0 {
		t.Fatal("probe refused")
	}
	in.noneBefore(t, "telemetry/site1/probe/x")
	if !strings.Contains(scrape(t, b), `vitalgate_cloud_acl_denied_total{action="publish",kind="gateway"} 6`) {
		t.Errorf("acl denials not counted:\n%s", grepLines(scrape(t, b), "acl_denied"))
	}
}

func TestAppSubscribesOnlyItsSites(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, ""))
	app := connectedApp(t, b, dir, "app1", mint(t, dir, "site1"))
	denied := packets.ErrNotAuthorized.Code
	cases := []struct {
		filter string
		code   byte
	}{
		{"telemetry/site1/#", 1},
		{"telemetry/site1/dev-00001/+", 1},
		{"security/site1/+", denied}, // a clinician's token (no role)
		{"gateways/site1/+/status", 1},
		{"fhir/site1/#", 1},
		{"$share/g1/telemetry/site1/#", 1},
		{"telemetry/site2/#", denied},
		{"#", denied},
		{"+/site1/#", denied},
		{"telemetry/+/dev-00001/spo2", denied},
		{"telemetry/#", denied},
		{"$SYS/#", denied},
		{"$share/g1/#", denied},
		{"devices/dev-00001/telemetry", denied},
	}
	for _, tc := range cases {
		code, err := app.subscribe(tc.filter)
		if err != nil || code != tc.code {
			t.Errorf("subscribe %q: code %#x err %v, want %#x", tc.filter, code, err, tc.code)
		}
	}
	if code, err := app.publish("telemetry/site1/dev-00001/spo2", []byte("forged")); err != nil || code != denied {
		t.Errorf("app publish: code %#x err %v, want %#x", code, err, denied)
	}

	// MQTT 3.1.1: a publish is refused by disconnecting; nothing reaches
	// subscribers.
	sub := pahoClient(t, "ssl://"+b.AppsAddr(), appTLS(t, dir), "app2", "app", mint(t, dir, "site1"), true)
	in := newInbox()
	wait(t, sub.Subscribe("telemetry/site1/#", 1, in.handler), "subscribe")
	lost := make(chan struct{})
	o := paho.NewClientOptions().AddBroker("ssl://" + b.AppsAddr()).SetClientID("app3").SetTLSConfig(appTLS(t, dir)).
		SetUsername("app").SetPassword(mint(t, dir, "site1")).SetAutoReconnect(false).SetProtocolVersion(4).
		SetConnectionLostHandler(func(paho.Client, error) { close(lost) })
	pub := paho.NewClient(o)
	wait(t, pub.Connect(), "connect publisher")
	pub.Publish("telemetry/site1/dev-00001/spo2", 1, false, "forged")
	select {
	case <-lost:
	case <-time.After(waitFor):
		t.Fatal("3.1.1 app that published was not disconnected")
	}
	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	wait(t, gw.Publish("telemetry/site1/probe/x", 1, false, "p"), "probe")
	in.noneBefore(t, "telemetry/site1/probe/x")
}

func TestBadTokensRefusedAtConnect(t *testing.T) {
	dir := testPKI(t)
	b, logs := startBroker(t, testConfig(dir, ""))
	key, err := pki.LoadKey(filepath.Join(dir, pki.FileAppTokenKey))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	claims := func(mod func(*AppClaims)) *AppClaims {
		c := &AppClaims{Sites: []string{"site1"}, RegisteredClaims: jwt.RegisteredClaims{
			ID: "0123456789abcdef0123456789abcdef", Subject: "mallory", Issuer: pki.TokenIssuer, Audience: jwt.ClaimStrings{pki.TokenAudience},
			IssuedAt: jwt.NewNumericDate(now.Add(-time.Minute)), ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)),
		}}
		if mod != nil {
			mod(c)
		}
		return c
	}
	sign := func(m jwt.SigningMethod, k any, c *AppClaims) string {
		s, err := jwt.NewWithClaims(m, c).SignedString(k)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	pub := key.Public().(*ecdsa.PublicKey)
	hmacKey, err := x509.MarshalPKIXPublicKey(pub) // HMAC secret = the public key as published: the alg-confusion attack
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, token, reason string }{
		{"expired", sign(jwt.SigningMethodES256, key, claims(func(c *AppClaims) {
			c.ExpiresAt = jwt.NewNumericDate(now.Add(-time.Hour))
		})), "expired"},
		// Within the parser's clock leeway: refused all the same (one rule
		// for CONNECT and deliveries; it was accepted, then every
		// subscription refused).
		{"expired_10s_ago", sign(jwt.SigningMethodES256, key, claims(func(c *AppClaims) {
			c.ExpiresAt = jwt.NewNumericDate(now.Add(-10 * time.Second))
		})), "expired"},
		{"forged", sign(jwt.SigningMethodES256, other, claims(nil)), "bad_signature"},
		{"wrong_audience", sign(jwt.SigningMethodES256, key, claims(func(c *AppClaims) {
			c.Audience = jwt.ClaimStrings{"someone-else"}
		})), "audience"},
		{"wrong_issuer", sign(jwt.SigningMethodES256, key, claims(func(c *AppClaims) { c.Issuer = "evil" })), "issuer"},
		{"no_exp", sign(jwt.SigningMethodES256, key, claims(func(c *AppClaims) { c.ExpiresAt = nil })), "missing_claim"},
		{"hs256", sign(jwt.SigningMethodHS256, hmacKey, claims(nil)), "bad_signature"},
		{"none", sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims(nil)), "bad_signature"},
		{"no_sites", sign(jwt.SigningMethodES256, key, claims(func(c *AppClaims) { c.Sites = nil })), "bad_claims"},
		{"wildcard_site", sign(jwt.SigningMethodES256, key, claims(func(c *AppClaims) { c.Sites = []string{"#"} })), "bad_claims"},
		// A token without a jti could never be revoked.
		{"no_jti", sign(jwt.SigningMethodES256, key, claims(func(c *AppClaims) { c.ID = "" })), "no_jti"},
		{"garbage", "not-a-jwt", "malformed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// MQTT 5: CONNACK 0x86 bad username or password.
			c, err := rawDial(t, b.AppsAddr(), appTLS(t, dir))
			if err != nil {
				t.Fatal(err)
			}
			code, err := c.connect("m-"+tc.name, "app", tc.token)
			if err != nil || code != packets.ErrBadUsernameOrPassword.Code {
				t.Fatalf("MQTT 5: code %#x err %v, want 0x86", code, err)
			}
			// MQTT 3.1.1: mochi maps 0x86 to return code 5 (not authorized).
			_, err = pahoConnect("ssl://"+b.AppsAddr(), appTLS(t, dir), "m3-"+tc.name, "app", tc.token, true)
			if !errors.Is(err, pahopk.ErrorRefusedBadUsernameOrPassword) && !errors.Is(err, pahopk.ErrorRefusedNotAuthorised) {
				t.Fatalf("MQTT 3.1.1: %v, want bad user name or password", err)
			}
			if !strings.Contains(logs.String(), "reason="+tc.reason) {
				t.Errorf("no log line with reason=%s", tc.reason)
			}
			if strings.Contains(logs.String(), tc.token) {
				t.Fatal("the token was logged")
			}
		})
	}
	if !strings.Contains(scrape(t, b), `vitalgate_cloud_auth_failures_total{kind="app",reason="expired"} 4`) {
		t.Errorf("expired tokens not counted:\n%s", grepLines(scrape(t, b), "auth_failures"))
	}
}

func TestWebSocketApp(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, ""))
	app := pahoClient(t, "wss://"+b.WSAddr()+"/", appTLS(t, dir), "ws-app", "app", mint(t, dir, "site1"), true)
	in := newInbox()
	wait(t, app.Subscribe("telemetry/site1/#", 1, in.handler), "subscribe")
	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	wait(t, gw.Publish("telemetry/site1/dev-00001/temp", 1, false, "hello"), "publish")
	if m := in.next(t); string(m.Payload()) != "hello" {
		t.Fatalf("got %q", m.Payload())
	}
	if _, err := pahoConnect("wss://"+b.WSAddr()+"/", appTLS(t, dir), "ws-bad", "app", "x.y.z", true); err == nil {
		t.Fatal("bad token accepted over websocket")
	}
}

func TestPersistenceAcrossRestart(t *testing.T) {
	dir := testPKI(t)
	data := t.TempDir()
	b, _ := startBroker(t, testConfig(dir, data))
	tok := mint(t, dir, "site1")

	// A persistent app session subscribes, then goes away.
	app := pahoClient(t, "ssl://"+b.AppsAddr(), appTLS(t, dir), "clinic-1", "app", tok, false)
	wait(t, app.Subscribe("telemetry/site1/#", 1, nil), "subscribe")
	app.Disconnect(100)

	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	const n = 5
	for i := 0; i < n; i++ {
		wait(t, gw.Publish("telemetry/site1/dev-00001/spo2", 1, false, []byte{byte('0' + i)}), "publish")
	}
	wait(t, gw.Publish("gateways/site1/gw1/status", 1, true, "online"), "publish status")
	gw.Disconnect(100)
	testutil.Eventually(t, waitFor, "queued for the absent app", func() bool {
		return strings.Contains(scrape(t, b), "vitalgate_cloud_inflight 5")
	})
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}

	// Another principal cannot take over the session's client ID.
	b2, _ := startBroker(t, testConfig(dir, data))
	bob, err := pki.MintToken(dir, "bob", []string{"site1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pahoConnect("ssl://"+b2.AppsAddr(), appTLS(t, dir), "clinic-1", "app", bob, false); err == nil {
		t.Fatal("another subject took over the persistent session")
	}

	// The app comes back: its queued messages arrive.
	in := newInbox()
	o := paho.NewClientOptions().AddBroker("ssl://" + b2.AppsAddr()).SetClientID("clinic-1").SetTLSConfig(appTLS(t, dir)).
		SetUsername("app").SetPassword(tok).SetCleanSession(false).SetAutoReconnect(false).SetProtocolVersion(4).
		SetDefaultPublishHandler(in.handler)
	app2 := paho.NewClient(o)
	wait(t, app2.Connect(), "reconnect")
	t.Cleanup(func() { app2.Disconnect(100) })
	got := map[string]bool{}
	for len(got) < n {
		m := in.next(t)
		got[string(m.Payload())] = true
	}

	// The retained status survived too.
	in2 := newInbox()
	app3 := pahoClient(t, "ssl://"+b2.AppsAddr(), appTLS(t, dir), "clinic-2", "app", tok, true)
	wait(t, app3.Subscribe("gateways/site1/+/status", 1, in2.handler), "subscribe status")
	if m := in2.next(t); string(m.Payload()) != "online" || !m.Retained() {
		t.Fatalf("status %q retained=%v", m.Payload(), m.Retained())
	}
}

func TestHealthAndClose(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, t.TempDir()))
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := http.Get("http://" + b.HTTPAddr() + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: %d", p, resp.StatusCode)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err == nil {
		t.Fatal("start after close succeeded")
	}
	// The store's directory lock is released: the same data dir opens again.
	b2, _ := startBroker(t, testConfig(dir, b.cfg.Data))
	_ = b2.Close()
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
