package cloud

import (
	"crypto/tls"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	pahopk "github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// revokeDeadline is the promise of docs/operations.md#revoking-a-gateway: a
// revocation closes its live sessions within 5 seconds.
const revokeDeadline = 5 * time.Second

// awaitClosed waits until every client's connection is closed, within the
// revocation deadline, and logs how long it took.
func awaitClosed(t *testing.T, what string, since time.Time, clients ...paho.Client) {
	t.Helper()
	testutil.Eventually(t, revokeDeadline, what+" closed", func() bool {
		for _, c := range clients {
			if c.IsConnectionOpen() {
				return false
			}
		}
		return true
	})
	t.Logf("%s closed %v after the revocation", what, time.Since(since).Round(time.Millisecond))
}

// gw2TLS issues the client certificate of a second gateway, gw2 of site1.
func gw2TLS(t *testing.T, dir string) *tls.Config {
	t.Helper()
	if err := pki.IssueGateway(dir, "gw2", "site1", pki.P256); err != nil {
		t.Fatal(err)
	}
	crt, key := pki.GatewayPaths(dir, "gw2")
	c, err := pki.ClientTLS(filepath.Join(dir, pki.FileCA), crt, key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRevokeGatewayLive(t *testing.T) {
	dir := testPKI(t)
	gw2Conf := gw2TLS(t, dir)
	b, logs := startBroker(t, testConfig(dir, ""))
	gwURL := "ssl://" + b.GatewayAddr()
	gw1 := pahoClient(t, gwURL, gatewayTLS(t, dir), "gw1", "", "", true)
	gw2 := pahoClient(t, gwURL, gw2Conf, "gw2", "", "", true)

	start := time.Now()
	if err := pki.RevokeGateway(dir, "gw1"); err != nil { // what `certs revoke --gateway gw1` calls
		t.Fatal(err)
	}
	awaitClosed(t, "gw1's session", start, gw1)

	// The other gateway is untouched.
	wait(t, gw2.Publish("telemetry/site1/dev-00001/temp", 1, false, "still here"), "gw2 publish")
	// gw1's reconnect is refused at the TLS handshake (TLS 1.3: the client
	// learns it at its first read, here the CONNACK).
	c, err := rawDial(t, b.GatewayAddr(), gatewayTLS(t, dir))
	if err == nil {
		_, err = c.connect("gw1", "", "")
	}
	if err == nil {
		t.Fatal("revoked gateway reconnected")
	}
	testutil.Eventually(t, waitFor, "handshake refusal logged", func() bool {
		return strings.Contains(logs.String(), "gateway handshake refused") && strings.Contains(logs.String(), "reason=revoked")
	})
	m := scrape(t, b)
	for _, want := range []string{`vitalgate_cloud_revoked_disconnects_total{kind="gateway"} 1`,
		`vitalgate_cloud_auth_failures_total{kind="gateway",reason="revoked"} 1`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(m, "revoked"))
		}
	}
}

func TestRevokeTokenLive(t *testing.T) {
	dir := testPKI(t)
	b, logs := startBroker(t, testConfig(dir, ""))
	tokA, tokB := mint(t, dir, "site1"), mint(t, dir, "site1")
	jtiA, err := pki.TokenIDOf(dir, tokA)
	if err != nil {
		t.Fatal(err)
	}
	tcpURL, wsURL := "ssl://"+b.AppsAddr(), "wss://"+b.WSAddr()+"/"
	appTCP := pahoClient(t, tcpURL, appTLS(t, dir), "a-tcp", "app", tokA, true)
	appWS := pahoClient(t, wsURL, appTLS(t, dir), "a-ws", "app", tokA, true)
	other := pahoClient(t, tcpURL, appTLS(t, dir), "b-tcp", "app", tokB, true)
	in := newInbox()
	wait(t, other.Subscribe("telemetry/site1/#", 1, in.handler), "subscribe")

	start := time.Now()
	if err := pki.RevokeToken(dir, jtiA); err != nil { // what `certs revoke --jti` calls
		t.Fatal(err)
	}
	awaitClosed(t, "token A's TCP and WebSocket sessions", start, appTCP, appWS)

	// The other app still receives.
	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	wait(t, gw.Publish("telemetry/site1/dev-00001/temp", 1, false, "hello"), "publish")
	if m := in.next(t); string(m.Payload()) != "hello" {
		t.Fatalf("other app got %q", m.Payload())
	}
	// A's reconnect: CONNACK not authorized, on MQTT 5 and 3.1.1, TCP and WebSocket.
	rc, err := rawDial(t, b.AppsAddr(), appTLS(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	if code, err := rc.connect("a-raw", "app", tokA); err != nil || code != packets.ErrNotAuthorized.Code {
		t.Fatalf("MQTT 5 reconnect: code %#x err %v, want 0x87 not authorized", code, err)
	}
	for _, url := range []string{tcpURL, wsURL} {
		if _, err := pahoConnect(url, appTLS(t, dir), "a-again", "app", tokA, true); !errors.Is(err, pahopk.ErrorRefusedNotAuthorised) {
			t.Fatalf("MQTT 3.1.1 reconnect on %s: %v, want not authorised", url, err)
		}
	}
	l := logs.String()
	if !strings.Contains(l, "revoked: closing the session") || !strings.Contains(l, "reason=revoked") || !strings.Contains(l, "jti="+jtiA) {
		t.Errorf("revocation not logged:\n%s", grepLines(l, "revoked"))
	}
	if strings.Contains(l, tokA) {
		t.Fatal("the token was logged")
	}
	if m := scrape(t, b); !strings.Contains(m, `vitalgate_cloud_revoked_disconnects_total{kind="app"} 2`) {
		t.Errorf("disconnects not counted:\n%s", grepLines(m, "revoked"))
	}
}

// TestRevocationListsFailSafe: a revoked-tokens or gateway-crl.pem that
// fails to load (a bad line, another CA's signature, a deleted file) keeps
// the previous list; a good one replaces it.
func TestRevocationListsFailSafe(t *testing.T) {
	dir := testPKI(t)
	tok := mint(t, dir, "site1")
	jti, err := pki.TokenIDOf(dir, tok)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.RevokeToken(dir, jti); err != nil {
		t.Fatal(err)
	}
	if err := pki.RevokeGateway(dir, "gw1"); err != nil {
		t.Fatal(err)
	}
	b, logs := startBroker(t, testConfig(dir, ""))
	refused := func() {
		t.Helper()
		rc, err := rawDial(t, b.AppsAddr(), appTLS(t, dir))
		if err != nil {
			t.Fatal(err)
		}
		if code, err := rc.connect("a", "app", tok); err != nil || code != packets.ErrNotAuthorized.Code {
			t.Fatalf("revoked token: code %#x err %v", code, err)
		}
		if _, err := pahoConnect("ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true); err == nil {
			t.Fatal("revoked gateway connected")
		}
	}
	refused()

	foreign := filepath.Join(testPKI(t), pki.FileGatewayCRL)
	crl, err := os.ReadFile(foreign)
	if err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(dir, pki.FileRevokedTokens)
	steps := []struct {
		name  string
		write func() error
		log   string
	}{
		{"bad line", func() error { return os.WriteFile(tokens, []byte(jti+"\nnot a jti\n"), 0o644) }, "reload revoked tokens (keeping the previous list)"},
		{"oversized", func() error {
			return os.WriteFile(tokens, []byte(strings.Repeat("# padding\n", pki.MaxRevokedTokensSize/10+1)), 0o644)
		}, "larger than"},
		{"deleted", func() error { return os.Remove(tokens) }, "file missing"},
		{"foreign CRL", func() error { return os.WriteFile(filepath.Join(dir, pki.FileGatewayCRL), crl, 0o644) },
			"reload gateway revocation list (keeping the previous list)"},
		{"garbage CRL", func() error { return os.WriteFile(filepath.Join(dir, pki.FileGatewayCRL), []byte("junk"), 0o644) }, "parse CRL"},
	}
	for _, s := range steps {
		if err := s.write(); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, waitFor, s.name+": reload failure logged", func() bool { return strings.Contains(logs.String(), s.log) })
		refused()
	}
	// A good file replaces the list: the token is accepted again.
	if err := os.WriteFile(tokens, []byte("# none revoked\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitFor, "token accepted after the list emptied", func() bool {
		c, err := pahoConnect("ssl://"+b.AppsAddr(), appTLS(t, dir), "a-ok", "app", tok, true)
		if err == nil {
			c.Disconnect(0)
		}
		return err == nil
	})
}

func TestStartRefusesBadRevocationLists(t *testing.T) {
	dir := testPKI(t)
	if err := os.WriteFile(filepath.Join(dir, pki.FileGatewayCRL), mustRead(t, filepath.Join(testPKI(t), pki.FileGatewayCRL)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(testConfig(dir, ""), nil); err == nil || !strings.Contains(err.Error(), "gateway revocation list") {
		t.Fatalf("CRL of another gateway CA: %v", err)
	}
	dir = testPKI(t)
	if err := os.WriteFile(filepath.Join(dir, pki.FileRevokedTokens), []byte("bad line\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(testConfig(dir, ""), nil); err == nil || !strings.Contains(err.Error(), "revoked-tokens:1") {
		t.Fatalf("bad revoked-tokens: %v", err)
	}
	if err := os.Remove(filepath.Join(dir, pki.FileRevokedTokens)); err != nil {
		t.Fatal(err)
	}
	if _, err := New(testConfig(dir, ""), nil); err != nil {
		t.Fatalf("missing revoked-tokens (none revoked): %v", err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// BenchmarkRevocationToClose measures the time from a token's revocation
// (the write of revoked-tokens) to the close of its live session, as the
// app sees it. The figure is bounded by the broker's poll of the file
// (revocationPoll): about half of it on average, at most all of it.
func BenchmarkRevocationToClose(b *testing.B) {
	dir := testPKI(b)
	br, _ := startBroker(b, testConfig(dir, ""))
	var total time.Duration
	n := 0
	for i := 0; b.Loop(); i++ {
		n++
		b.StopTimer()
		tok := mint(b, dir, "site1")
		jti, err := pki.TokenIDOf(dir, tok)
		if err != nil {
			b.Fatal(err)
		}
		c, err := pahoConnect("ssl://"+br.AppsAddr(), appTLS(b, dir), "bench", "app", tok, true)
		if err != nil {
			b.Fatal(err)
		}
		// Revoke at a random phase of the broker's poll: each close comes just
		// after a poll, so back-to-back revocations would all wait a whole one.
		time.Sleep(rand.N(revocationPoll))
		b.StartTimer()
		start := time.Now()
		if err := pki.RevokeToken(dir, jti); err != nil {
			b.Fatal(err)
		}
		if !testutil.Poll(2*revokeDeadline, func() bool { return !c.IsConnectionOpen() }) {
			b.Fatalf("session %d not closed", i)
		}
		total += time.Since(start)
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(max(n, 1)), "ms/revocation")
}
