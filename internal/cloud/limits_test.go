package cloud

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
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

// identities returns how many identities the auth hook holds for client ID id.
func identities(b *Broker, id string) int {
	b.hook.mu.RLock()
	defer b.hook.mu.RUnlock()
	n := 0
	for cl := range b.hook.ids {
		if cl.ID == id {
			n++
		}
	}
	return n
}

// mochi returns from a connection without OnDisconnect when it cannot write
// the CONNACK (here: an MQTT 5 client whose Maximum Packet Size of 3 bytes is
// smaller than any CONNACK). The identity OnConnect stored, and with it the
// *mqtt.Client, must not stay in the auth hook forever: the periodic sweep
// forgets it, and the connections gauge, which never counted it, stays right.
func TestIdentityOfDroppedConnectionForgotten(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, ""))
	tok := mint(t, dir, "site1")

	// A live app across the sweep keeps its identity and its count.
	live := connectedApp(t, b, dir, "live", tok)

	const n = 20
	for i := 0; i < n; i++ {
		c, err := rawDial(t, b.AppsAddr(), appTLS(t, dir))
		if err != nil {
			t.Fatal(err)
		}
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
			Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30,
				ClientIdentifier: fmt.Sprintf("dropped-%d", i),
				UsernameFlag:     true, Username: []byte("app"), PasswordFlag: true, Password: []byte(tok)},
			Properties: packets.Properties{MaximumPacketSize: 3}}
		if err := c.send(pk, (*packets.Packet).ConnectEncode); err != nil {
			t.Fatal(err)
		}
		if _, err := c.read(); err == nil {
			t.Fatal("the broker answered a client that accepts no packet")
		}
		_ = c.conn.Close()
	}
	testutil.Eventually(t, waitFor, "identities of dropped connections forgotten", func() bool {
		b.hook.mu.RLock()
		defer b.hook.mu.RUnlock()
		return len(b.hook.ids) == 1
	})
	if identities(b, "live") != 1 {
		t.Fatal("the sweep forgot a connected client")
	}
	if !strings.Contains(scrape(t, b), `vitalgate_cloud_connections{kind="app"} 1`) {
		t.Fatalf("connections gauge:\n%s", grepLines(scrape(t, b), "vitalgate_cloud_connections"))
	}
	// The live app is still judged by its token.
	if code, err := live.subscribe("telemetry/site1/#"); err != nil || code != 1 {
		t.Fatalf("live app subscribe after the sweep: %#x %v", code, err)
	}
	_ = live.conn.Close()
	testutil.Eventually(t, waitFor, "gauge back to zero", func() bool {
		return strings.Contains(scrape(t, b), `vitalgate_cloud_connections{kind="app"} 0`)
	})
}

// A filter or topic deeper than 8 levels or longer than 512 bytes is refused
// for apps and gateways. Without the bound, a 32,000-level filter below an
// allowed site was granted, and mochi spent seconds building a node per level
// while holding the topic index's lock, which every publish waits for.
func TestDeepAndLongTopicsRefused(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, ""))
	app := connectedApp(t, b, dir, "deep", mint(t, dir, "site1"))
	denied := packets.ErrNotAuthorized.Code
	eight := "telemetry/site1/a/b/c/d/e/f"                // 8 levels
	nine := "telemetry/site1/a/b/c/d/e/f/g"               // 9 levels
	long := "telemetry/site1/" + strings.Repeat("x", 497) // 513 bytes, 3 levels
	filters := []struct {
		filter string
		code   byte
	}{
		{eight, 1},
		{"telemetry/site1/a/b/c/d/e/#", 1},
		{"$share/g/" + eight, 1},
		{long[:512], 1},
		{nine, denied},
		{"telemetry/site1/a/b/c/d/e/f/#", denied},
		{"$share/g/" + nine, denied},
		{long, denied},
		{"telemetry/site1/" + strings.Repeat("a/", 32000) + "#", denied},
	}
	for _, tc := range filters {
		code, err := app.subscribe(tc.filter)
		if err != nil || code != tc.code {
			t.Errorf("subscribe %.60q (%d bytes): code %#x err %v, want %#x", tc.filter, len(tc.filter), code, err, tc.code)
		}
	}

	gw, err := rawDial(t, b.GatewayAddr(), gatewayTLS(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	if code, err := gw.connect("gw1", "", ""); err != nil || code != 0 {
		t.Fatalf("gateway connect: %#x %v", code, err)
	}
	topics := []struct {
		topic string
		code  byte
	}{
		{eight, 0},
		{long[:512], 0},
		{nine, denied},
		{long, denied},
		{"telemetry/site1/" + strings.Repeat("a/", 1000) + "x", denied},
	}
	for _, tc := range topics {
		code, err := gw.publish(tc.topic, []byte("x"))
		if err != nil || code != tc.code {
			t.Errorf("publish %.60q (%d bytes): code %#x err %v, want %#x", tc.topic, len(tc.topic), code, err, tc.code)
		}
	}
}

// A session holds at most maxSubscriptions filters. The bound is applied to
// the SUBSCRIBE as a whole (not in OnACLCheck, which mochi also calls for
// every delivery): filters beyond it get 0x8F, filters the session holds
// already and filters refused anyway do not count, and the SUBACK has one
// code per filter.
func TestSubscriptionsPerSessionBounded(t *testing.T) {
	dir := testPKI(t)
	b, logs := startBroker(t, testConfig(dir, ""))
	app := connectedApp(t, b, dir, "many", mint(t, dir, "site1"))
	dev := func(i int) string { return fmt.Sprintf("telemetry/site1/dev-%05d/#", i) }
	var first []string
	for i := 0; i < maxSubscriptions-2; i++ {
		first = append(first, dev(i))
	}
	codes, err := app.subscribeAll(first...)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range codes {
		if c != 1 {
			t.Fatalf("filter %d of %d: code %#x", i, len(first), c)
		}
	}

	// Two held filters again, one refused filter, then three new ones: two
	// fit (and a repeat of one of them in the same packet), the third does not.
	const invalid, denied = 0x8F, 0x87
	codes, err = app.subscribeAll(dev(0), dev(1), "telemetry/site2/#", dev(100), dev(101), dev(101), dev(102))
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{1, 1, denied, 1, 1, 1, invalid}; string(codes) != string(want) {
		t.Fatalf("SUBACK codes % x, want % x", codes, want)
	}
	// Full: a new filter is refused, a held one is still granted.
	codes, err = app.subscribeAll(dev(200), dev(2))
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{invalid, 1}; string(codes) != string(want) {
		t.Fatalf("SUBACK codes % x, want % x", codes, want)
	}
	cl, ok := b.srv.Clients.Get("many")
	if !ok || cl.State.Subscriptions.Len() != maxSubscriptions {
		t.Fatalf("session holds %d subscriptions, want %d", cl.State.Subscriptions.Len(), maxSubscriptions)
	}
	if !strings.Contains(scrape(t, b), `vitalgate_cloud_acl_denied_total{action="subscribe",kind="app"} 3`) {
		t.Errorf("refusals not counted:\n%s", grepLines(scrape(t, b), "acl_denied"))
	}
	if !strings.Contains(logs.String(), "subscriptions, the most allowed") {
		t.Error("the refusal was not logged")
	}

	// Deliveries, which mochi checks with OnACLCheck too, are not limited.
	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	for i := 0; i < 3; i++ {
		wait(t, gw.Publish(fmt.Sprintf("telemetry/site1/dev-%05d/spo2", i), 1, false, "v"), "publish")
	}
	for got := 0; got < 3; {
		pk, err := app.read()
		if err != nil {
			t.Fatalf("after %d deliveries: %v", got, err)
		}
		if pk.FixedHeader.Type == packets.Publish {
			got++
		}
	}
}

// One app principal holds at most maxAppSessions sessions, connected or not:
// each disconnected persistent session queues up to max_inflight messages for
// session_expiry, so one token could otherwise fill the broker's memory by
// connecting under ever new client IDs. A CONNECT that would create one more
// is refused with quota exceeded (3.1.1: not authorized); the principal's
// existing sessions and other principals are unaffected.
func TestAppSessionsPerPrincipalBounded(t *testing.T) {
	dir := testPKI(t)
	b, logs := startBroker(t, testConfig(dir, ""))
	tok := mint(t, dir, "site1")
	for i := 0; i < maxAppSessions; i++ {
		c := pahoClient(t, "ssl://"+b.AppsAddr(), appTLS(t, dir), fmt.Sprintf("alice-%d", i), "app", tok, false)
		c.Disconnect(50)
	}
	testutil.Eventually(t, waitFor, "sessions held", func() bool { return b.srv.Clients.Len() == maxAppSessions })

	c, err := rawDial(t, b.AppsAddr(), appTLS(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	if code, err := c.connect("alice-new", "app", tok); err != nil || code != packets.ErrQuotaExceeded.Code {
		t.Fatalf("MQTT 5 session beyond the bound: code %#x err %v, want 0x97", code, err)
	}
	_, err = pahoConnect("ssl://"+b.AppsAddr(), appTLS(t, dir), "alice-new3", "app", tok, false)
	if !errors.Is(err, pahopk.ErrorRefusedNotAuthorised) {
		t.Fatalf("MQTT 3.1.1 session beyond the bound: %v, want not authorised", err)
	}
	if b.srv.Clients.Len() != maxAppSessions {
		t.Fatalf("%d sessions held, want %d", b.srv.Clients.Len(), maxAppSessions)
	}
	if !strings.Contains(scrape(t, b), `vitalgate_cloud_auth_failures_total{kind="app",reason="sessions"} 2`) {
		t.Errorf("refusals not counted:\n%s", grepLines(scrape(t, b), "auth_failures"))
	}
	if !strings.Contains(logs.String(), "reason=sessions") {
		t.Error("the refusal was not logged")
	}

	// The principal takes its own sessions back; another principal connects.
	pahoClient(t, "ssl://"+b.AppsAddr(), appTLS(t, dir), "alice-3", "app", tok, false)
	bob, err := pki.MintToken(dir, "bob", []string{"site1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pahoClient(t, "ssl://"+b.AppsAddr(), appTLS(t, dir), "bob-1", "app", bob, false)
}

// site2GatewayTLS is a client TLS config with a certificate of the gateway
// CA for gateway gw1 of site2: the same ID as the test PKI's gateway (site1,
// gw1), as two sites' `certs init` give by default.
func site2GatewayTLS(t *testing.T, dir string) *tls.Config {
	t.Helper()
	caCert, err := pki.LoadCert(filepath.Join(dir, pki.FileGatewayCA))
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := pki.LoadKey(filepath.Join(dir, pki.FileGatewayCAKey))
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.LoadKey(filepath.Join(dir, pki.FileGatewayClientKey)) // only the subject matters
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(4242),
		Subject:   pkix.Name{CommonName: "gw1", OrganizationalUnit: []string{"site2"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	tc := gatewayTLS(t, dir)
	tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
	}
	return tc
}

// A gateway's client ID belongs to its site and ID: a gateway of another site
// with the same ID is refused while the first is connected or holds a session
// (also one restored from the store), instead of taking it over and flapping
// with it. The gateway itself still takes over its own session, as its relay
// does when it reconnects before the broker noticed the old connection died.
func TestGatewayClientIDBelongsToItsSite(t *testing.T) {
	dir := testPKI(t)
	data := t.TempDir()
	b, _ := startBroker(t, testConfig(dir, data))
	site2 := site2GatewayTLS(t, dir)
	refused := func(b *Broker) {
		t.Helper()
		c, err := rawDial(t, b.GatewayAddr(), site2)
		if err != nil {
			t.Fatal(err)
		}
		if code, err := c.connect("gw1", "", ""); err != nil || code != packets.ErrBadUsernameOrPassword.Code {
			t.Fatalf("site2's gw1: code %#x err %v, want 0x86", code, err)
		}
	}
	gw1 := func(b *Broker, clean bool, lost chan<- error) paho.Client {
		o := paho.NewClientOptions().AddBroker("ssl://" + b.GatewayAddr()).SetClientID("gw1").SetTLSConfig(gatewayTLS(t, dir)).
			SetCleanSession(clean).SetAutoReconnect(false).SetProtocolVersion(4).
			SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
		c := paho.NewClient(o)
		wait(t, c.Connect(), "site1's gw1 connect")
		t.Cleanup(func() { c.Disconnect(50) })
		return c
	}

	// Connected.
	lost := make(chan error, 2)
	first := gw1(b, true, lost)
	refused(b)
	wait(t, first.Publish("telemetry/site1/dev-00001/spo2", 1, false, "still here"), "site1's gw1 publish after the refusal")
	select {
	case err := <-lost:
		t.Fatalf("site1's gw1 lost its connection: %v", err)
	default:
	}
	// Its own second connection takes over (the relay's reconnect).
	second := gw1(b, true, lost)
	select {
	case <-lost:
	case <-time.After(waitFor):
		t.Fatal("the first connection was not taken over")
	}
	second.Disconnect(50)

	// A persistent session, held while away and restored after a restart.
	lost2 := make(chan error, 1)
	gw1(b, false, lost2).Disconnect(50)
	testutil.Eventually(t, waitFor, "session held", func() bool { cl, ok := b.srv.Clients.Get("gw1"); return ok && cl.Closed() })
	refused(b)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b2, _ := startBroker(t, testConfig(dir, data))
	if _, ok := b2.srv.Clients.Get("gw1"); !ok {
		t.Fatal("the gateway's session was not restored")
	}
	refused(b2)
	gw1(b2, false, lost2)
}

// Only granted subscriptions are stored: mochi's pebble store kept refused
// filters too, and a restart subscribed them, so a disconnected session
// queued another site's messages (until its next CONNECT pruned them) and an
// over-deep filter would have been rebuilt at every start.
func TestRefusedSubscriptionsNotStored(t *testing.T) {
	dir := testPKI(t)
	data := t.TempDir()
	b, _ := startBroker(t, testConfig(dir, data))
	app := pahoClient(t, "ssl://"+b.AppsAddr(), appTLS(t, dir), "clinic-1", "app", mint(t, dir, "site1"), false)
	for _, f := range []string{"#", "telemetry/site2/#", "telemetry/site1/" + strings.Repeat("a/", 100) + "#", "telemetry/site1/#"} {
		wait(t, app.Subscribe(f, 1, nil), "subscribe")
	}
	app.Disconnect(50)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b2, _ := startBroker(t, testConfig(dir, data))
	cl, ok := b2.srv.Clients.Get("clinic-1")
	if !ok {
		t.Fatal("session not restored")
	}
	var got []string
	for f := range cl.State.Subscriptions.GetAll() {
		got = append(got, f)
	}
	if len(got) != 1 || got[0] != "telemetry/site1/#" {
		t.Fatalf("restored subscriptions %q, want only telemetry/site1/#", got)
	}
	if subs := b2.srv.Topics.Subscribers("telemetry/site2/dev-00001/spo2"); len(subs.Subscriptions) != 0 {
		t.Fatalf("site2 telemetry has subscribers after the restart: %v", subs.Subscriptions)
	}
}

// A gateway takes back its client ID from an app that made a session under
// it: the relay connects with a clean session, so the ID is free between its
// connections, and an app holding it (even across a restart, from the store)
// must not lock the gateway out. The app cannot take it while the gateway
// holds it.
func TestGatewayTakesItsClientIDFromAnApp(t *testing.T) {
	dir := testPKI(t)
	data := t.TempDir()
	b, _ := startBroker(t, testConfig(dir, data))
	tok := mint(t, dir, "site1")
	squat := func(b *Broker) {
		t.Helper()
		pahoClient(t, "ssl://"+b.AppsAddr(), appTLS(t, dir), "gw1", "app", tok, false).Disconnect(50)
		testutil.Eventually(t, waitFor, "the app's session under gw1", func() bool { cl, ok := b.srv.Clients.Get("gw1"); return ok && cl.Closed() })
	}
	gateway := func(b *Broker) paho.Client {
		t.Helper()
		c, err := pahoConnect("ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
		if err != nil {
			t.Fatalf("the gateway locked out of its client ID: %v", err)
		}
		return c
	}
	squat(b)
	gateway(b).Disconnect(50)
	squat(b)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b2, _ := startBroker(t, testConfig(dir, data))
	if cl, ok := b2.srv.Clients.Get("gw1"); !ok || !strings.HasPrefix(string(cl.Properties.Username), "app:") {
		t.Fatal("the app's session under gw1 was not restored")
	}
	g := gateway(b2)
	defer g.Disconnect(50)
	if _, err := pahoConnect("ssl://"+b2.AppsAddr(), appTLS(t, dir), "gw1", "app", tok, false); err == nil {
		t.Fatal("an app took the client ID of a connected gateway")
	}
}
