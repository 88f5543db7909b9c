package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	packets5 "github.com/eclipse/paho.golang/packets"
	paho5 "github.com/eclipse/paho.golang/paho"
	mqtt3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/gateway/internal/inventory"
	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// env is a PKI, a running gateway with its embedded cloud broker, and a
// clinician app subscribed at the cloud.
type env struct {
	t      testing.TB
	pki    string
	cfg    config.Config
	gw     *Gateway
	gwAddr string // device listener of a gateway run as a process
}

func quietLog(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		level := slog.LevelInfo
		if os.Getenv("VG_DEBUG") != "" {
			level = slog.LevelDebug
		}
		return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level}))
	}
	// Otherwise keep the latest warnings and show them only if the test fails.
	w := &tailWriter{max: 200}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last gateway warnings:\n%s", w.String())
		}
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// tailWriter keeps the last max lines written to it.
type tailWriter struct {
	mu    sync.Mutex
	max   int
	lines []string
}

func (w *tailWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lines = append(w.lines, strings.TrimSpace(string(b)))
	if len(w.lines) > w.max {
		w.lines = w.lines[len(w.lines)-w.max:]
	}
	return len(b), nil
}

func (w *tailWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.lines, "\n")
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

func newPKI(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{Site: "site1", GatewayID: "gw1"}); err != nil {
		t.Fatal(err)
	}
	return dir
}

func testConfig(t testing.TB, pkiDir string) config.Config {
	c := config.Default()
	c.PKI = pkiDir
	c.Listen = "127.0.0.1:0"
	c.HTTP = "127.0.0.1:0"
	c.HTTPS = "127.0.0.1:0"
	c.Data = t.TempDir()
	c.Embedded = config.Embedded{Apps: "127.0.0.1:0"}
	return c
}

func newEnv(t testing.TB, mod func(*config.Config)) *env {
	t.Helper()
	e := &env{t: t, pki: newPKI(t)}
	e.cfg = testConfig(t, e.pki)
	if mod != nil {
		mod(&e.cfg)
	}
	e.start()
	return e
}

func (e *env) start() {
	e.t.Helper()
	g, err := New(e.cfg, quietLog(e.t))
	if err != nil {
		e.t.Fatal(err)
	}
	if err := g.Start(); err != nil {
		g.Close()
		e.t.Fatal(err)
	}
	e.gw = g
	e.t.Cleanup(func() { g.Close() })
}

func (e *env) device(id string) {
	e.t.Helper()
	if err := pki.IssueDevice(e.pki, id, pki.P256, 30); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) deviceTLS(id string) *tls.Config {
	e.t.Helper()
	crt, key := pki.DevicePaths(e.pki, id)
	c, err := pki.ClientTLS(filepath.Join(e.pki, pki.FileCA), crt, key)
	if err != nil {
		e.t.Fatal(err)
	}
	c.ServerName = "localhost"
	return c
}

// dial5 connects an MQTT 5 device (paho.golang) and returns the client.
func (e *env) dial5(id, clientID string) (*paho5.Client, *paho5.Connack, error) {
	return e.dialAt(e.gw.DeviceAddr(), id, clientID)
}

func (e *env) dialAt(addr, id string, clientID ...string) (*paho5.Client, *paho5.Connack, error) {
	return e.dialWith(&net.Dialer{Timeout: 5 * time.Second}, addr, id, clientID...)
}

// dialWith is dialAt through dialer d (from another local address, say).
func (e *env) dialWith(d *net.Dialer, addr, id string, clientID ...string) (*paho5.Client, *paho5.Connack, error) {
	if len(clientID) == 0 {
		clientID = []string{id}
	}
	return e.dialTLSWith(d, addr, e.deviceTLS(id), id, clientID[0])
}

// dialTLS connects an MQTT 5 device with the TLS configuration tc.
func (e *env) dialTLS(addr string, tc *tls.Config, id, clientID string) (*paho5.Client, *paho5.Connack, error) {
	return e.dialTLSWith(&net.Dialer{Timeout: 5 * time.Second}, addr, tc, id, clientID)
}

// dialTLSWith connects an MQTT 5 device through dialer d with the TLS configuration tc.
func (e *env) dialTLSWith(d *net.Dialer, addr string, tc *tls.Config, id, clientID string) (*paho5.Client, *paho5.Connack, error) {
	conn, err := tls.DialWithDialer(d, "tcp", addr, tc)
	if err != nil {
		return nil, nil, err
	}
	c := paho5.NewClient(paho5.ClientConfig{Conn: packets5.NewThreadSafeConn(conn),
		OnClientError: func(err error) { e.t.Logf("device %s: client error: %v", id, err) },
		OnServerDisconnect: func(d *paho5.Disconnect) {
			e.t.Logf("device %s: server disconnect 0x%02x", id, d.ReasonCode)
		}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := c.Connect(ctx, &paho5.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true})
	if err != nil {
		conn.Close()
		return nil, ack, err
	}
	e.t.Cleanup(func() { c.Disconnect(&paho5.Disconnect{}) })
	return c, ack, nil
}

func (e *env) mustDial5(id string) *paho5.Client {
	e.t.Helper()
	c, _, err := e.dial5(id, id)
	if err != nil {
		e.t.Fatalf("connect %s: %v", id, err)
	}
	return c
}

// dial3 connects an MQTT 3.1.1 device (paho.mqtt.golang).
func (e *env) dial3(id string) mqtt3.Client {
	e.t.Helper()
	o := mqtt3.NewClientOptions().AddBroker("ssl://" + e.gw.DeviceAddr()).SetClientID(id).
		SetTLSConfig(e.deviceTLS(id)).SetAutoReconnect(false).SetConnectRetry(false).SetProtocolVersion(4).
		SetCleanSession(true)
	c := mqtt3.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		e.t.Fatalf("connect %s over 3.1.1: %v", id, tok.Error())
	}
	e.t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// newClient5 is an MQTT 5 client on conn. paho.golang writes a packet in
// several Write calls; its pinger writes from another goroutine, so the
// connection must be its thread-safe wrapper or a PINGREQ can land inside
// a PUBLISH.
func newClient5(conn net.Conn) *paho5.Client {
	return paho5.NewClient(paho5.ClientConfig{Conn: packets5.NewThreadSafeConn(conn)})
}

// publish5 sends a QoS 1 PUBLISH and returns the PUBACK reason code.
func publish5(t *testing.T, c *paho5.Client, topic string, payload []byte) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	pr, err := c.Publish(ctx, &paho5.Publish{Topic: topic, QoS: 1, Payload: payload})
	if pr == nil {
		t.Fatalf("publish to %s (%d bytes): no PUBACK: %v", topic, len(payload), err)
	}
	return pr.ReasonCode
}

func telemetryTopic(id string) string { return "devices/" + id + "/telemetry" }

// spo2 is a valid pulse-oximeter record.
func spo2(dev string, seq uint64) *telemetry.Record {
	return &telemetry.Record{V: 1, Dev: dev, Seq: seq, TS: time.Now().UnixMilli(), Kind: "spo2", Obs: []telemetry.Observation{
		{Code: "MDC_PULS_OXIM_SAT_O2", Val: telemetry.Scalar(97), Unit: "%"},
		{Code: "MDC_PULS_OXIM_PULS_RATE", Val: telemetry.Scalar(72), Unit: "/min"},
	}}
}

// sign encodes rec and signs it with the key of device keyID.
func (e *env) sign(keyID string, rec *telemetry.Record) []byte {
	e.t.Helper()
	_, keyFile := pki.DevicePaths(e.pki, keyID)
	return e.signWith(keyFile, keyID, rec)
}

// signWith encodes rec and signs it with the key in keyFile, as device keyID.
func (e *env) signWith(keyFile, keyID string, rec *telemetry.Record) []byte {
	e.t.Helper()
	b, err := telemetry.Encode(rec)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.signFile(keyFile, keyID, b)
}

// signFile signs payload with the key in keyFile, as device keyID.
func (e *env) signFile(keyFile, keyID string, payload []byte) []byte {
	e.t.Helper()
	key, err := pki.LoadKey(keyFile)
	if err != nil {
		e.t.Fatal(err)
	}
	msg, err := envelope.Sign(key, keyID, payload)
	if err != nil {
		e.t.Fatal(err)
	}
	return msg
}

// app is a clinician app subscribed at the cloud broker with a JWT.
type app struct {
	mu     sync.Mutex
	msgs   []*wire.Message
	topics []string
	events []string
	chains []chainMsg // on certs/site1/#
	inv    []invMsg   // on inventory/site1/#
	c      mqtt3.Client
}

// invMsg is one inventory entry an app received.
type invMsg struct {
	topic    string
	entry    inventory.Entry
	retained bool
}

// chainMsg is one certificate chain an app received.
type chainMsg struct {
	topic, pem string
	retained   bool
}

func (e *env) app(brokerURL string) *app { return e.appWith(brokerURL, true) }

func (e *env) appWith(brokerURL string, clean bool) *app {
	e.t.Helper()
	// An operator: it also reads the security events and inventory.
	tok, err := pki.MintRoleToken(e.pki, "test-app", pki.RoleOperator, []string{"site1"}, time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	tc, err := pki.ClientTLS(filepath.Join(e.pki, pki.FileCA), "", "")
	if err != nil {
		e.t.Fatal(err)
	}
	tc.ServerName = "localhost"
	a := &app{}
	o := mqtt3.NewClientOptions().AddBroker(brokerURL).SetClientID("test-app").SetUsername("test-app").
		SetPassword(tok).SetTLSConfig(tc).SetAutoReconnect(false).SetCleanSession(clean)
	a.c = mqtt3.NewClient(o)
	if t := a.c.Connect(); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		e.t.Fatalf("app connect: %v", t.Error())
	}
	e.t.Cleanup(func() { a.c.Disconnect(100) })
	filters := map[string]byte{"telemetry/site1/#": 1, "security/site1/#": 1, "certs/site1/#": 1, "inventory/site1/#": 1}
	sub := a.c.SubscribeMultiple(filters, func(_ mqtt3.Client, m mqtt3.Message) {
		a.mu.Lock()
		defer a.mu.Unlock()
		if strings.HasPrefix(m.Topic(), "certs/") {
			a.chains = append(a.chains, chainMsg{m.Topic(), string(m.Payload()), m.Retained()})
			return
		}
		if strings.HasPrefix(m.Topic(), "inventory/") {
			var en inventory.Entry
			if err := json.Unmarshal(m.Payload(), &en); err != nil {
				e.t.Errorf("inventory entry on %s: %v", m.Topic(), err)
			}
			a.inv = append(a.inv, invMsg{m.Topic(), en, m.Retained()})
			return
		}
		if strings.HasPrefix(m.Topic(), "security/") {
			a.events = append(a.events, string(m.Payload()))
			return
		}
		msg, err := wire.Decode(m.Payload())
		if err != nil {
			e.t.Errorf("cloud message on %s: %v", m.Topic(), err)
			return
		}
		a.msgs = append(a.msgs, msg)
		a.topics = append(a.topics, m.Topic())
	})
	if !sub.WaitTimeout(10*time.Second) || sub.Error() != nil {
		e.t.Fatalf("app subscribe: %v", sub.Error())
	}
	return a
}

// chainsOf returns the chains received on topic, in order.
func (a *app) chainsOf(topic string) []chainMsg {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []chainMsg
	for _, c := range a.chains {
		if c.topic == topic {
			out = append(out, c)
		}
	}
	return out
}

func (a *app) ids() map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := map[string]int{}
	for _, x := range a.msgs {
		m[x.ID]++
	}
	return m
}

func (a *app) eventsWith(s string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, ev := range a.events {
		if strings.Contains(ev, s) {
			n++
		}
	}
	return n
}

func (e *env) rejected(v string) float64 { return e.metric("vitalgate_gateway_rejected_total", v) }

// metric reads a counter or gauge of the gateway; label is the value of its
// only label, or "" for an unlabelled series. Absent: -1.
func (e *env) metric(name, label string) float64 {
	mfs, err := e.gw.Registry().Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && (len(m.GetLabel()) != 1 || m.GetLabel()[0].GetValue() != label) {
				continue
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			if m.GetHistogram() != nil {
				return float64(m.GetHistogram().GetSampleCount())
			}
			return m.GetGauge().GetValue()
		}
	}
	if strings.HasSuffix(name, "_total") {
		return 0
	}
	return -1
}

func (e *env) signRaw(keyID string, payload []byte) []byte {
	e.t.Helper()
	_, keyFile := pki.DevicePaths(e.pki, keyID)
	return e.signFile(keyFile, keyID, payload)
}

func (e *env) deviceCert(id string) *x509.Certificate {
	e.t.Helper()
	crt, _ := pki.DevicePaths(e.pki, id)
	c, err := pki.LoadCert(crt)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func subscribe5(t *testing.T, c *paho5.Client, filter string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if sa == nil || len(sa.Reasons) != 1 {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	return sa.Reasons[0]
}

// publishTimeout bounds the wait for one PUBACK.
var publishTimeout = 10 * time.Second
