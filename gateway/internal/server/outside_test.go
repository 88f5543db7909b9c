package server

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	mqtt3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/internal/cloud/cloudtest"
	"github.com/vitalgate/vitalgate/internal/testutil"
	"github.com/vitalgate/vitalgate/internal/verdict"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// Outside brokers as the cloud (docs/design.md#trust): the gateway relays
// into Mosquitto, into NATS server with MQTT, and into a 3-node NATS
// cluster whose node it uses is lost mid-stream. The cloudtest helpers skip
// a test when the broker is not installed.

// cloudSub is a subscriber at an outside broker (with the gateway client
// certificate: outside brokers here admit the gateway CA only) that keeps
// the ids of the cloud messages it receives.
type cloudSub struct {
	t   *testing.T
	mu  sync.Mutex
	ids map[string]int
	n   int // messages, duplicates included
	c   mqtt3.Client

	events []string // security events
	status string   // last gateway status

}

// subscribeOutside connects clientID to url and subscribes to the
// telemetry, security events and status of site1 with QoS 1. With clean false the session persists at
// the broker and the client reconnects on its own.
func subscribeOutside(t *testing.T, pkiDir, url, clientID string, clean bool) *cloudSub {
	t.Helper()
	s := &cloudSub{t: t, ids: map[string]int{}}
	handler := func(_ mqtt3.Client, m mqtt3.Message) {
		switch {
		case strings.HasPrefix(m.Topic(), "security/"):
			s.mu.Lock()
			s.events = append(s.events, string(m.Payload()))
			s.mu.Unlock()
			return
		case strings.HasPrefix(m.Topic(), "gateways/"):
			s.mu.Lock()
			s.status = string(m.Payload())
			s.mu.Unlock()
			return
		case !strings.HasPrefix(m.Topic(), "telemetry/"):
			return
		}
		msg, err := wire.Decode(m.Payload())
		if err != nil {
			t.Errorf("cloud message on %s: %v", m.Topic(), err)
			return
		}
		s.mu.Lock()
		s.ids[msg.ID]++
		s.n++
		s.mu.Unlock()
	}
	o := mqtt3.NewClientOptions().AddBroker(url).SetClientID(clientID).SetTLSConfig(cloudtest.GatewayTLS(t, pkiDir)).
		SetProtocolVersion(4).SetCleanSession(clean).SetAutoReconnect(!clean).SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second).SetMaxReconnectInterval(time.Second).SetDefaultPublishHandler(handler).
		SetResumeSubs(true)
	s.c = mqtt3.NewClient(o)
	// NATS keeps MQTT sessions in JetStream: CONNECT fails until it is ready.
	var err error
	testutil.Eventually(t, 60*time.Second, "the subscriber connected to "+url, func() bool {
		tok := s.c.Connect()
		if !tok.WaitTimeout(10 * time.Second) {
			err = fmt.Errorf("connect timed out")
			return false
		}
		err = tok.Error()
		return err == nil
	})
	t.Cleanup(func() { s.c.Disconnect(100) })
	tok := s.c.SubscribeMultiple(map[string]byte{"telemetry/site1/#": 1, "security/site1/#": 1, "gateways/site1/#": 1}, handler)
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe at %s: %v", url, tok.Error())
	}
	return s
}

func (s *cloudSub) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids)
}

// missing returns the ids of dev's seqs that have not arrived.
func (s *cloudSub) missing(dev string, seqs []uint64) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, q := range seqs {
		if id := fmt.Sprintf("%s:%d", dev, q); s.ids[id] == 0 {
			out = append(out, id)
		}
	}
	return out
}

// outsideGateway starts a gateway on pkiDir relaying to urls.
func outsideGateway(t *testing.T, pkiDir string, urls ...string) *env {
	t.Helper()
	e := &env{t: t, pki: pkiDir}
	e.cfg = testConfig(t, pkiDir)
	e.cfg.Cloud = urls
	// Test devices stream faster than the default per-device rate (20/s,
	// burst 200) allows.
	e.cfg.Rate.Messages, e.cfg.Rate.Burst = 10000, 10000
	e.start()
	if e.gw.Cloud() != nil {
		t.Fatal("the gateway started its embedded cloud although --cloud was set")
	}
	return e
}

// relayN has a device publish n records and waits for all of them at sub.
func relayN(t *testing.T, e *env, sub *cloudSub, dev string, n int) {
	t.Helper()
	e.device(dev)
	c := e.mustDial5(dev)
	acked := publishStream(t, c, e, dev, 1, uint64(n))
	if len(acked) != n {
		t.Fatalf("%d of %d records acknowledged", len(acked), n)
	}
	testutil.Eventually(t, 30*time.Second, fmt.Sprintf("%d records at the outside broker", n), func() bool {
		return len(sub.missing(dev, acked)) == 0
	})
	testutil.Eventually(t, 10*time.Second, "the gateway queue to drain", func() bool { return e.gw.Queue().Len() == 0 })
	if got := sub.count(); got != n {
		t.Fatalf("subscriber has %d distinct records, want %d", got, n)
	}
	// Security events and the gateway status travel through it too.
	if code := publish5(t, c, telemetryTopic(dev), []byte("not a COSE message")); code != verdict.Malformed.Code().Code {
		t.Fatalf("junk payload: 0x%02x, want malformed", code)
	}
	testutil.Eventually(t, 20*time.Second, "the malformed event and the online status at the outside broker", func() bool {
		sub.mu.Lock()
		defer sub.mu.Unlock()
		for _, ev := range sub.events {
			var a audit.Event
			if json.Unmarshal([]byte(ev), &a) == nil && a.Verdict == string(verdict.Malformed) && a.Dev == dev && a.GW == "gw1" {
				return sub.status == "online"
			}
		}
		return false
	})
}

// TestOutsideMosquitto: Mosquitto (TLS with our broker certificate, gateway
// CA client certificates, set_tcp_nodelay) in place of our cloud broker.
func TestOutsideMosquitto(t *testing.T) {
	dir := newPKI(t)
	m := cloudtest.StartMosquitto(t, dir)
	sub := subscribeOutside(t, dir, m.URL(), "monitor", true)
	e := outsideGateway(t, dir, m.URL())
	relayN(t, e, sub, "oxi-m", 200)
	testutil.Eventually(t, 10*time.Second, "the relay connected", e.gw.relay.Connected)
}

// TestOutsideNATS: a single NATS server with MQTT and JetStream enabled.
func TestOutsideNATS(t *testing.T) {
	dir := newPKI(t)
	nodes := cloudtest.StartNATS(t, dir, 1)
	sub := subscribeOutside(t, dir, nodes[0].URL(), "monitor", true)
	e := outsideGateway(t, dir, nodes[0].URL())
	relayN(t, e, sub, "oxi-n", 200)
}

// TestOutsideNATSClusterFailover: a 3-node NATS cluster on loopback. The
// gateway has nodes 1 and 2 as --cloud URLs and relays through node 1; a
// persistent QoS 1 subscriber sits on node 3. Node 1 is killed (SIGKILL)
// while a device streams: the relay fails over to node 2, and every record
// the device saw acknowledged reaches the subscriber (deduplicated by id).
func TestOutsideNATSClusterFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node NATS cluster")
	}
	dir := newPKI(t)
	nodes := cloudtest.StartNATS(t, dir, 3)
	sub := subscribeOutside(t, dir, nodes[2].URL(), "monitor", false)
	e := outsideGateway(t, dir, nodes[0].URL(), nodes[1].URL())
	const dev = "ecg-f"
	e.device(dev)
	c := e.mustDial5(dev)

	// Phase 1: through node 1.
	acked := publishStream(t, c, e, dev, 1, 100)
	if len(acked) != 100 {
		t.Fatalf("%d of 100 records acknowledged", len(acked))
	}
	testutil.Eventually(t, 30*time.Second, "records through node 1", func() bool { return sub.count() >= 50 })

	// Phase 2: the device streams on while node 1 dies, and for 100 records
	// after that.
	const last = 1000 // bound of the stream
	payloads := map[uint64][]byte{}
	for s := uint64(101); s <= last; s++ {
		payloads[s] = e.sign(dev, spo2(dev, s))
	}
	killed := make(chan struct{})
	var killedAt uint64 // first seq published after the kill
	var published atomic.Int64
	var more []uint64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for s := uint64(101); s <= last; s++ {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			pr, err := c.Publish(ctx, &paho5.Publish{Topic: telemetryTopic(dev), QoS: 1, Payload: payloads[s]})
			cancel()
			if pr == nil { // no PUBACK: the connection broke
				t.Errorf("seq %d: %v", s, err)
				return
			}
			if pr.ReasonCode != 0 {
				t.Errorf("seq %d: 0x%02x", s, pr.ReasonCode)
				return
			}
			more = append(more, s)
			published.Add(1)
			select {
			case <-killed:
				if killedAt == 0 {
					killedAt = s + 1
				}
			default:
			}
			if killedAt != 0 && s >= killedAt+100 {
				return
			}
			time.Sleep(2 * time.Millisecond) // pace the stream so that node 1 dies mid-way
		}
	}()
	testutil.Eventually(t, 30*time.Second, "the stream under way", func() bool { return published.Load() >= 50 })
	nodes[0].Stop()
	kill := time.Now()
	close(killed)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if killedAt == 0 {
		t.Fatalf("the stream of %d records ended before node 1 was stopped", last)
	}
	acked = append(acked, more...)
	t.Logf("%d records acknowledged by the gateway, node 1 killed before seq %d", len(acked), killedAt)

	// The cluster's leader elections, not the gateway, set this time: on a
	// loaded machine they take well over a minute. Bounded at 3 minutes.
	for e.counter("vitalgate_relay_reconnects_total") < 1 || !e.gw.relay.Connected() {
		if time.Since(kill) > 3*time.Minute {
			t.Fatalf("the relay has not reconnected elsewhere %v after the kill\nnode 2:\n%s\nnode 3:\n%s",
				time.Since(kill).Round(time.Second), tail(nodes[1].Output(), 40), tail(nodes[2].Output(), 20))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A node that has not served MQTT yet needs the cluster to re-elect the
	// leaders node 1 held before it accepts a client: NATS answers the first
	// CONNECTs with EOF after a 4 s JetStream API timeout each.
	t.Logf("relay reconnected %v after the kill", time.Since(kill).Round(100*time.Millisecond))
	var missing []string
	deadline := time.Now().Add(60 * time.Second)
	for {
		missing = sub.missing(dev, acked)
		if len(missing) == 0 && e.gw.Queue().Len() == 0 {
			break
		}
		if time.Now().After(deadline) {
			n := len(missing)
			if n > 10 {
				missing = missing[:10]
			}
			t.Fatalf("%d acknowledged records never reached the subscriber (e.g. %v); queue %d\nnode 2:\n%s",
				n, missing, e.gw.Queue().Len(), tail(nodes[1].Output(), 40))
		}
		time.Sleep(20 * time.Millisecond)
	}
	sub.mu.Lock()
	dups := sub.n - len(sub.ids)
	sub.mu.Unlock()
	t.Logf("%d records acknowledged across the loss of node 1, all at node 3 (%d duplicates dropped by id)", len(acked), dups)
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
