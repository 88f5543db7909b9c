package relay_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/vitalgate/vitalgate/gateway/internal/relay"
	"github.com/vitalgate/vitalgate/gateway/internal/spool"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
	"github.com/vitalgate/vitalgate/internal/wire"
)

const statusTopic = "gateways/" + site + "/" + gw + "/status"

// subscriberSeqs groups the telemetry a subscriber received by device, in order.
func subscriberSeqs(t *testing.T, s *subscriber) (map[string][]uint64, map[string]bool) {
	t.Helper()
	seqs, seen := map[string][]uint64{}, map[string]bool{}
	for _, m := range s.messages() {
		if !strings.HasPrefix(m.Topic(), "telemetry/") {
			continue
		}
		dev, seq, err := parsePayload(m.Payload())
		if err != nil {
			t.Fatalf("subscriber got %q: %v", m.Payload(), err)
		}
		seqs[dev] = append(seqs[dev], seq)
		seen[string(m.Payload())] = true
	}
	return seqs, seen
}

func TestRelayDeliversEveryEntry(t *testing.T) {
	rec := newRecorder(t)
	b := startBroker(t, "127.0.0.1:0", nil, rec)
	sub := subscribe(t, b.url(), nil, "telemetry/#")
	q := openQueue(t, rec)
	devs := devices(5)
	fill(t, q.Queue, devs, 1, 100)

	r := start(t, baseConfig(b.url()), q)
	testutil.Eventually(t, patience, "queue drained", func() bool { return q.Len() == 0 })
	// Appends after the queue ran dry reach the relay through Notify.
	fill(t, q.Queue, devs, 101, 200)
	testutil.Eventually(t, patience, "queue drained again", func() bool { return q.Len() == 0 })
	testutil.Eventually(t, patience, "subscriber has all 1000", func() bool {
		_, seen := subscriberSeqs(t, sub)
		return len(seen) == 1000
	})
	seqs, _ := subscriberSeqs(t, sub)
	checkOrder(t, seqs)
	rec.checkOrder(t)

	if !r.Connected() || r.metric(t, "vitalgate_relay_connected") != 1 {
		t.Error("relay not reported connected")
	}
	if got := r.metric(t, "vitalgate_relay_acked_total"); got != 1000 {
		t.Errorf("acked_total = %v, want 1000", got)
	}
	if got := r.metric(t, "vitalgate_relay_published_total"); got < 1000 {
		t.Errorf("published_total = %v, want >= 1000", got)
	}
	if got := r.metric(t, "vitalgate_relay_reconnects_total"); got != 0 {
		t.Errorf("reconnects_total = %v, want 0", got)
	}
	r.stop(t)
	if r.Connected() || r.metric(t, "vitalgate_relay_connected") != 0 {
		t.Error("relay still reported connected after Run returned")
	}
}

// A publish that paho fails at once, on a connection that stays up (its
// writer busy past WriteTimeout), ends the session before any later entry is
// sent: the next session resends from the failed entry, so no entry of a
// device overtakes an earlier one, and everything arrives.
func TestRelayPublishFailureKeepsOrder(t *testing.T) {
	rec := newRecorder(t)
	b := startBroker(t, "127.0.0.1:0", nil, rec)
	q := openQueue(t, rec)
	devs := devices(3)
	fill(t, q.Queue, devs, 1, 200)
	r := build(t, baseConfig(b.url()), q)
	r.FailNthPublish(100)
	r.run(t)
	testutil.Eventually(t, patience, "queue drained", func() bool { return q.Len() == 0 })
	if got := rec.distinct(); got != 600 {
		t.Fatalf("broker got %d distinct entries, want 600", got)
	}
	rec.checkOrder(t)
	if got := r.metric(t, "vitalgate_relay_reconnects_total"); got < 1 {
		t.Errorf("reconnects_total = %v: the failed publish did not end the session", got)
	}
}

// TestRelayBrokerRestart stops the broker while publishes await their PUBACK,
// checks that the queue still holds everything not acknowledged, then restarts
// a broker on the same port and checks that everything drains in order.
func TestRelayBrokerRestart(t *testing.T) {
	rec := newRecorder(t)
	rec.gateAt, rec.gate, rec.gated = 500, make(chan struct{}), make(chan struct{})
	b1 := startBroker(t, "127.0.0.1:0", nil, rec)
	q := openQueue(t, rec)
	devs := devices(8)
	fill(t, q.Queue, devs, 1, 250)

	cfg := baseConfig(b1.url())
	cfg.Window = 64
	r := start(t, cfg, q)
	select {
	case <-rec.gated:
	case <-time.After(patience):
		t.Fatal("broker never reached the stall point")
	}
	// Mid-stream: the relay has publishes awaiting PUBACK. mochi's Close closes
	// the connections, then waits for the stalled hook, so release it after.
	closed := make(chan struct{})
	go func() { b1.close(); close(closed) }()
	testutil.Eventually(t, patience, "relay disconnected", func() bool { return !r.Connected() })
	close(rec.gate)
	<-closed

	// Everything the broker has not received is still queued.
	left, err := q.Queue.Peek(0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) < 2000-500 {
		t.Fatalf("queue holds %d entries after the stall at 500 of 2000", len(left))
	}
	queued := map[string]bool{}
	for _, e := range left {
		queued[fmt.Sprintf("%s:%d", e.Dev, e.Seq)] = true
	}
	for _, d := range devs {
		for seq := uint64(1); seq <= 250; seq++ {
			if !queued[fmt.Sprintf("%s:%d", d, seq)] && !rec.has(d, seq) {
				t.Fatalf("%s:%d is neither queued nor received by the broker", d, seq)
			}
		}
	}

	fill(t, q.Queue, devs, 251, 300) // the queue grows during the outage
	startBroker(t, b1.addr, nil, rec)
	testutil.Eventually(t, patience, "queue drained after restart", func() bool { return q.Len() == 0 })
	if got := rec.distinct(); got != 2400 {
		t.Fatalf("broker received %d distinct entries, want 2400", got)
	}
	rec.checkOrder(t)
	r.stop(t) // before the broker goes: a graceful stop
	if got := r.metric(t, "vitalgate_relay_reconnects_total"); got < 1 {
		t.Errorf("reconnects_total = %v, want >= 1", got)
	}
	if a, p := r.metric(t, "vitalgate_relay_acked_total"), r.metric(t, "vitalgate_relay_published_total"); a < 2400 || p < a {
		t.Errorf("acked_total %v, published_total %v: want 2400 <= acked <= published", a, p)
	}
}

// TestRelayFailoverTLS gives the relay a first URL that refuses connections and
// a second one served over mTLS with the deployment's PKI.
func TestRelayFailoverTLS(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{Site: site, GatewayID: gw}); err != nil {
		t.Fatal(err)
	}
	gwCAs, err := pki.LoadPool(filepath.Join(dir, pki.FileGatewayCA))
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, err := pki.ServerTLS(filepath.Join(dir, pki.FileBroker), filepath.Join(dir, pki.FileBrokerKey), gwCAs, nil)
	if err != nil {
		t.Fatal(err)
	}
	clientTLS, err := pki.ClientTLS(filepath.Join(dir, pki.FileCA), filepath.Join(dir, pki.FileGatewayClient), filepath.Join(dir, pki.FileGatewayClientKey))
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder(t)
	b := startBroker(t, "127.0.0.1:0", serverTLS, rec)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := ln.Addr().String()
	_ = ln.Close()

	q := openQueue(t, rec)
	fill(t, q.Queue, devices(3), 1, 50)
	cfg := baseConfig("mqtts://"+refused, "mqtts://"+b.addr)
	cfg.TLS = clientTLS
	r := start(t, cfg, q)
	testutil.Eventually(t, patience, "queue drained through the second URL", func() bool { return q.Len() == 0 })
	if got := rec.distinct(); got != 150 {
		t.Fatalf("broker received %d distinct entries, want 150", got)
	}
	if !r.Connected() {
		t.Error("relay not connected")
	}
	sub := subscribe(t, "ssl://"+b.addr, clientTLS, statusTopic)
	testutil.Eventually(t, patience, "retained online", func() bool { return slices.Equal(sub.payloads(statusTopic), []string{"online"}) })
}

// TestRelayStatusAndWill checks the retained status: online on connect, the
// offline will when the connection dies abruptly, online again after the
// reconnect, and offline after a graceful stop.
func TestRelayStatusAndWill(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0", nil, nil)
	cfg := baseConfig(b.url())
	cfg.ClientID = "relay-will"
	q := openQueue(t, nil)
	r := start(t, cfg, q)
	testutil.Eventually(t, patience, "relay connected", r.Connected)

	sub := subscribe(t, b.url(), nil, statusTopic)
	testutil.Eventually(t, patience, "retained online", func() bool { return slices.Equal(sub.payloads(statusTopic), []string{"online"}) })

	// Cut the relay's TCP connection without a DISCONNECT: the broker sends the will.
	cl, ok := b.srv.Clients.Get(cfg.ClientID)
	if !ok {
		t.Fatal("relay's client not found on the broker")
	}
	_ = cl.Net.Conn.Close()
	want := []string{"online", "offline", "online"}
	testutil.Eventually(t, patience, "will then online again", func() bool { return slices.Equal(sub.payloads(statusTopic), want) })
	testutil.Eventually(t, patience, "relay reconnected", r.Connected)
	if got := r.metric(t, "vitalgate_relay_reconnects_total"); got != 1 {
		t.Errorf("reconnects_total = %v, want 1", got)
	}

	r.stop(t)
	testutil.Eventually(t, patience, "offline on graceful stop", func() bool {
		return slices.Equal(sub.payloads(statusTopic), append(want, "offline"))
	})
	late := subscribe(t, b.url(), nil, statusTopic)
	testutil.Eventually(t, patience, "retained offline", func() bool { return slices.Equal(late.payloads(statusTopic), []string{"offline"}) })
}

func TestRelayEvents(t *testing.T) {
	const eventTopic = "security/" + site + "/" + gw
	b := startBroker(t, "127.0.0.1:0", nil, nil)
	sub := subscribe(t, b.url(), nil, eventTopic)
	cfg := baseConfig(b.url())
	cfg.EventBuffer = 8
	r := build(t, cfg, openQueue(t, nil))

	// Before any connection events wait in the buffer; beyond it they are dropped and counted.
	for i := range 10 {
		r.PublishEvent(fmt.Appendf(nil, `{"v":1,"verdict":"bad_signature","n":%d}`, i))
	}
	if got := r.metric(t, "vitalgate_relay_events_dropped_total"); got != 2 {
		t.Fatalf("events_dropped_total = %v, want 2", got)
	}
	r.run(t)
	testutil.Eventually(t, patience, "buffered events delivered", func() bool { return len(sub.payloads(eventTopic)) == 8 })
	for i := 10; i < 15; i++ {
		r.PublishEvent(fmt.Appendf(nil, `{"v":1,"verdict":"replay","n":%d}`, i))
	}
	testutil.Eventually(t, patience, "live events delivered", func() bool { return len(sub.payloads(eventTopic)) == 13 })
	got := sub.payloads(eventTopic)
	slices.Sort(got)
	if len(slices.Compact(got)) != 13 {
		t.Errorf("events are not distinct: %q", got)
	}
	for _, m := range sub.messages() {
		if m.Qos() != 1 {
			t.Errorf("event delivered with QoS %d", m.Qos())
		}
	}
}

// TestRelayMosquitto relays through a real Mosquitto when it is installed.
func TestRelayMosquitto(t *testing.T) {
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		t.Skip("mosquitto not on PATH")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	_ = ln.Close()
	dir := t.TempDir()
	conf := filepath.Join(dir, "mosquitto.conf")
	body := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\n", addr.Port)
	if os.Geteuid() == 0 {
		body += "user root\n"
	}
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(bin, "-c", conf)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	testutil.Eventually(t, patience, "mosquitto listening", func() bool {
		select {
		case <-exited:
			t.Fatalf("mosquitto exited: %s", out.String())
		default:
		}
		c, err := net.Dial("tcp", addr.String())
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	})
	url := "mqtt://" + addr.String()
	sub := subscribe(t, "tcp://"+addr.String(), nil, "#")
	q := openQueue(t, nil)
	fill(t, q.Queue, devices(10), 1, 100)
	start(t, baseConfig(url), q)
	testutil.Eventually(t, patience, "queue drained", func() bool { return q.Len() == 0 })
	testutil.Eventually(t, patience, "subscriber has all 1000", func() bool {
		_, seen := subscriberSeqs(t, sub)
		return len(seen) == 1000
	})
	seqs, _ := subscriberSeqs(t, sub)
	checkOrder(t, seqs)
	testutil.Eventually(t, patience, "status online", func() bool { return slices.Contains(sub.payloads(statusTopic), "online") })
}

// TestRelayEventsSurviveLostConnection checks that security events published
// but not acknowledged when the connection dies are sent again on the next
// connection. The broker stalls on a telemetry message, so the events behind
// it on the same connection get no PUBACK; then the broker goes, and another
// one on the same port must receive every event.
func TestRelayEventsSurviveLostConnection(t *testing.T) {
	const eventTopic = "security/" + site + "/" + gw
	rec := newRecorder(t)
	rec.gateAt, rec.gate, rec.gated = 1, make(chan struct{}), make(chan struct{})
	b1 := startBroker(t, "127.0.0.1:0", nil, rec)
	q := openQueue(t, rec)
	fill(t, q.Queue, devices(1), 1, 1)
	r := start(t, baseConfig(b1.url()), q)
	select {
	case <-rec.gated:
	case <-time.After(patience):
		t.Fatal("broker never reached the stall point")
	}
	const n = 5
	for i := range n {
		r.PublishEvent(fmt.Appendf(nil, `{"v":1,"verdict":"replay","n":%d}`, i))
	}
	testutil.Eventually(t, patience, "events taken from the buffer", func() bool { return r.EventsBuffered() == 0 })

	closed := make(chan struct{})
	go func() { b1.close(); close(closed) }()
	testutil.Eventually(t, patience, "relay disconnected", func() bool { return !r.Connected() })
	close(rec.gate)
	<-closed

	rec2 := newRecorder(t)
	startBroker(t, b1.addr, nil, rec2)
	testutil.Eventually(t, patience, "every event at the new broker", func() bool {
		got := rec2.payloads(eventTopic)
		slices.Sort(got)
		return len(slices.Compact(got)) == n
	})
	testutil.Eventually(t, patience, "queue drained", func() bool { return q.Len() == 0 })
	if got := r.metric(t, "vitalgate_relay_events_dropped_total"); got != 0 {
		t.Errorf("events_dropped_total = %v, want 0", got)
	}
}

// TestRelaySkipsMalformedEntry checks that an entry without a topic does not
// stall the queue behind it.
func TestRelaySkipsMalformedEntry(t *testing.T) {
	rec := newRecorder(t)
	b := startBroker(t, "127.0.0.1:0", nil, rec)
	q := openQueue(t, nil) // the malformed entry is removed unpublished, by design
	if err := q.Append("bad", 1, []byte("no separator")); err != nil {
		t.Fatal(err)
	}
	fill(t, q.Queue, devices(1), 1, 10)
	start(t, baseConfig(b.url()), q)
	testutil.Eventually(t, patience, "queue drained", func() bool { return q.Len() == 0 })
	if got := rec.distinct(); got != 10 {
		t.Fatalf("broker received %d, want 10", got)
	}
}

func TestConfigValidate(t *testing.T) {
	good := baseConfig("tcp://127.0.0.1:1883", "mqtts://h:8883", "mqtt://h:1", "ssl://h:2", "tls://h:3")
	if err := good.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	bad := relay.Config{URLs: []string{"http://h:1", "tcp://nohost"}, Site: "a/b", GatewayID: "", Format: "xml",
		Window: -1, BackoffMin: time.Second, BackoffMax: time.Millisecond}
	err := bad.Validate()
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, field := range []string{"URLs[0]", "URLs[1]", "Site", "GatewayID", "Format", "Window", "BackoffMax"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error does not name %s: %v", field, err)
		}
	}
	if _, err := relay.New(relay.Config{}, openQueue(t, nil)); err == nil {
		t.Error("New accepted an empty config")
	}
}

// BenchmarkRelay measures entries moved from the spool through a local mochi
// broker to a subscriber: "nosync" isolates the relay, "fsync" includes the
// spool's durable removes.
func BenchmarkRelay(b *testing.B) {
	for _, mode := range []struct {
		name   string
		noSync bool
	}{{"nosync", true}, {"fsync", false}} {
		b.Run(mode.name, func(b *testing.B) { benchRelay(b, mode.noSync) })
	}
}

func benchRelay(b *testing.B, noSync bool) {
	var got atomic.Int64
	br := startBroker(b, "127.0.0.1:0", nil, nil)
	o := paho.NewClientOptions().AddBroker(br.url()).SetClientID("bench-sub").SetAutoReconnect(false)
	sub := paho.NewClient(o)
	if tok := sub.Connect(); !tok.WaitTimeout(patience) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	defer sub.Disconnect(0)
	if tok := sub.Subscribe("telemetry/#", 1, func(paho.Client, paho.Message) { got.Add(1) }); !tok.WaitTimeout(patience) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	q, err := spool.Open(filepath.Join(b.TempDir(), "queue.db"), spool.Options{NoSync: noSync})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	devs := devices(50)
	payload := bytes.Repeat([]byte{0xa5}, 300) // about the size of a signed vitals record
	n := b.N
	var wg sync.WaitGroup
	for i, d := range devs { // concurrent appends share the spool's commits
		wg.Go(func() {
			topic := "telemetry/" + site + "/" + d + "/vitals"
			for seq := uint64(1); i+int(seq-1)*len(devs) < n; seq++ {
				if err := q.Append(d, seq, wire.Frame(topic, payload)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if q.Len() != n {
		b.Fatalf("queued %d, want %d", q.Len(), n)
	}
	b.ResetTimer()
	r := start(b, baseConfig(br.url()), q)
	testutil.Eventually(b, patience, "queue drained", func() bool { return q.Len() == 0 })
	testutil.Eventually(b, patience, "subscriber has all", func() bool { return got.Load() >= int64(n) })
	b.StopTimer()
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "msgs/s")
	r.stop(b)
}
