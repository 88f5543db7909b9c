package cloud

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/internal/pki"

	"github.com/vitalgate/vitalgate/internal/testutil"
)

const waitFor = 10 * time.Second

// testPKI creates a PKI (site1, gw1) and one device certificate.
func testPKI(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatalf("pki init: %v", err)
	}
	if err := pki.IssueDevice(dir, "dev-00001", pki.P256, 0); err != nil {
		t.Fatalf("issue device: %v", err)
	}
	return dir
}

// logBuf collects log output for assertions.
type logBuf = testutil.SyncBuffer

func testConfig(dir, data string) Config {
	cfg := Default()
	cfg.PKI = dir
	cfg.Listen, cfg.Apps, cfg.WS, cfg.HTTP = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Data = data
	return cfg
}

func startBroker(t testing.TB, cfg Config) (*Broker, *logBuf) {
	t.Helper()
	lb := &logBuf{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(lb, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelInfo}))
	b, err := New(cfg, log)
	if err != nil {
		t.Fatalf("new: %v", err)
	}
	if err := b.Start(); err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b, lb
}

// testWriter sends logs to t.Log only when -v is on (keeps failures readable).
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	if testing.Verbose() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func gatewayTLS(t testing.TB, dir string) *tls.Config {
	t.Helper()
	c, err := pki.ClientTLS(filepath.Join(dir, pki.FileCA), filepath.Join(dir, pki.FileGatewayClient), filepath.Join(dir, pki.FileGatewayClientKey))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func deviceTLS(t *testing.T, dir string) *tls.Config {
	t.Helper()
	crt, key := pki.DevicePaths(dir, "dev-00001")
	c, err := pki.ClientTLS(filepath.Join(dir, pki.FileCA), crt, key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func appTLS(t testing.TB, dir string) *tls.Config {
	t.Helper()
	c, err := pki.ClientTLS(filepath.Join(dir, pki.FileCA), "", "")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mint(t testing.TB, dir string, sites ...string) string {
	t.Helper()
	tok, err := pki.MintToken(dir, "alice", sites, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// pahoClient connects a paho (MQTT 3.1.1) client and fails the test if it
// cannot.
func pahoClient(t *testing.T, url string, tc *tls.Config, id, user, pass string, clean bool) paho.Client {
	t.Helper()
	c, err := pahoConnect(url, tc, id, user, pass, clean)
	if err != nil {
		t.Fatalf("connect %s as %s: %v", url, id, err)
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func pahoConnect(url string, tc *tls.Config, id, user, pass string, clean bool) (paho.Client, error) {
	o := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetTLSConfig(tc).
		SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(waitFor).SetOrderMatters(false).SetProtocolVersion(4)
	if user != "" || pass != "" {
		o.SetUsername(user).SetPassword(pass)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(waitFor) {
		return nil, fmt.Errorf("connect timed out")
	}
	return c, tok.Error()
}

func wait(t *testing.T, tok paho.Token, what string) {
	t.Helper()
	if !tok.WaitTimeout(waitFor) {
		t.Fatalf("%s: timed out", what)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// inbox collects messages delivered to a paho subscription.
type inbox struct {
	ch chan paho.Message
}

func newInbox() *inbox { return &inbox{ch: make(chan paho.Message, 1024)} }

func (in *inbox) handler(_ paho.Client, m paho.Message) {
	select {
	case in.ch <- m:
	default:
	}
}

func (in *inbox) next(t *testing.T) paho.Message {
	t.Helper()
	select {
	case m := <-in.ch:
		return m
	case <-time.After(waitFor):
		t.Fatal("no message within the deadline")
		return nil
	}
}

// none checks that nothing arrives after a round trip through the broker:
// the publisher's message to probeTopic (which the inbox also receives)
// arrives first, so anything sent before it has been delivered already.
func (in *inbox) noneBefore(t *testing.T, probe string) {
	t.Helper()
	if m := in.next(t); m.Topic() != probe {
		t.Fatalf("unexpected message on %s: %q", m.Topic(), m.Payload())
	}
}

// rawClient is a minimal MQTT 5 client on mochi's packet codec, to see exact
// reason codes.
type rawClient struct {
	t    *testing.T
	conn *tls.Conn
	r    *bufio.Reader
	id   uint16
}

func rawDial(t *testing.T, addr string, tc *tls.Config) (*rawClient, error) {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, tc)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(waitFor))
	t.Cleanup(func() { _ = conn.Close() })
	return &rawClient{t: t, conn: conn, r: bufio.NewReader(conn)}, nil
}

func (c *rawClient) send(pk packets.Packet, enc func(*packets.Packet, *bytes.Buffer) error) error {
	var buf bytes.Buffer
	if err := enc(&pk, &buf); err != nil {
		return err
	}
	_, err := c.conn.Write(buf.Bytes())
	return err
}

func (c *rawClient) read() (packets.Packet, error) {
	var fh packets.FixedHeader
	b, err := c.r.ReadByte()
	if err != nil {
		return packets.Packet{}, err
	}
	if err := fh.Decode(b); err != nil {
		return packets.Packet{}, err
	}
	n, _, err := packets.DecodeLength(c.r)
	if err != nil {
		return packets.Packet{}, err
	}
	fh.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return packets.Packet{}, err
	}
	pk := packets.Packet{FixedHeader: fh, ProtocolVersion: 5}
	switch fh.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	}
	return pk, err
}

// connect sends an MQTT 5 CONNECT and returns the CONNACK reason code.
func (c *rawClient) connect(clientID, user, pass string) (byte, error) {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: clientID}}
	if user != "" {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte(user)
	}
	if pass != "" {
		pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte(pass)
	}
	if err := c.send(pk, (*packets.Packet).ConnectEncode); err != nil {
		return 0, err
	}
	ack, err := c.read()
	if err != nil {
		return 0, err
	}
	if ack.FixedHeader.Type != packets.Connack {
		return 0, fmt.Errorf("got packet type %d, want CONNACK", ack.FixedHeader.Type)
	}
	return ack.ReasonCode, nil
}

// publish sends a QoS 1 PUBLISH and returns the PUBACK reason code.
func (c *rawClient) publish(topic string, payload []byte) (byte, error) {
	return c.publishRetain(topic, payload, false)
}

// publishRetain sends a QoS 1 PUBLISH, retained if retain, and returns the
// PUBACK reason code.
func (c *rawClient) publishRetain(topic string, payload []byte, retain bool) (byte, error) {
	c.id++
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: retain}, ProtocolVersion: 5,
		TopicName: topic, Payload: payload, PacketID: c.id}
	if err := c.send(pk, (*packets.Packet).PublishEncode); err != nil {
		return 0, err
	}
	for i := 0; i < 100; i++ {
		ack, err := c.read()
		if err != nil {
			return 0, err
		}
		if ack.FixedHeader.Type == packets.Puback && ack.PacketID == c.id {
			return ack.ReasonCode, nil
		}
	}
	return 0, fmt.Errorf("no PUBACK")
}

// subscribe sends a SUBSCRIBE of one filter and returns the SUBACK code.
func (c *rawClient) subscribe(filter string) (byte, error) {
	codes, err := c.subscribeAll(filter)
	if err != nil {
		return 0, err
	}
	return codes[0], nil
}

// subscribeAll sends one SUBSCRIBE of the filters and returns the SUBACK's
// codes, checking that there is one per filter.
func (c *rawClient) subscribeAll(filters ...string) ([]byte, error) {
	c.id++
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 5, PacketID: c.id}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: 1})
	}
	if err := c.send(pk, (*packets.Packet).SubscribeEncode); err != nil {
		return nil, err
	}
	for i := 0; i < 100; i++ {
		ack, err := c.read()
		if err != nil {
			return nil, err
		}
		if ack.FixedHeader.Type == packets.Suback && ack.PacketID == c.id {
			if len(ack.ReasonCodes) != len(filters) {
				return nil, fmt.Errorf("suback with %d codes for %d filters", len(ack.ReasonCodes), len(filters))
			}
			return ack.ReasonCodes, nil
		}
	}
	return nil, fmt.Errorf("no SUBACK")
}

// scrape returns the /metrics text.
func scrape(t *testing.T, b *Broker) string {
	t.Helper()
	resp, err := http.Get("http://" + b.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// connectedApp dials the apps listener and connects as clientID with tok,
// failing the test unless the CONNACK is success.
func connectedApp(t *testing.T, b *Broker, dir, clientID, tok string) *rawClient {
	t.Helper()
	c, err := rawDial(t, b.AppsAddr(), appTLS(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	if code, err := c.connect(clientID, "app", tok); err != nil || code != 0 {
		t.Fatalf("app %s connect: code %#x err %v", clientID, code, err)
	}
	return c
}
