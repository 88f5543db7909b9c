package relay_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitalgate/vitalgate/gateway/internal/relay"
	"github.com/vitalgate/vitalgate/gateway/internal/spool"
	"github.com/vitalgate/vitalgate/internal/testutil"
	"github.com/vitalgate/vitalgate/internal/wire"
)

const (
	site = "site1"
	gw   = "gw1"
	// patience bounds every wait of these tests; they poll, never sleep for a result.
	patience = 60 * time.Second
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// recorder is a broker hook that records every message the broker accepted,
// in arrival order. It records in OnPublish, which mochi calls before it sends
// the PUBACK (OnPublished comes after it). One recorder can serve several broker instances.
type recorder struct {
	mqtt.HookBase
	// gateAt, when > 0, makes the broker stall (stop reading from the publisher,
	// so no more PUBACKs) at that telemetry message until gate is closed; gated is
	// closed when it stalls.
	gateAt      int
	gate, gated chan struct{}
	mu          sync.Mutex
	seqs        map[string][]uint64 // telemetry: dev -> seqs in arrival order
	seen        map[string]bool     // telemetry: "dev:seq"
	count       int                 // telemetry messages, duplicates included
	topics      map[string][]string // topic -> payloads
	fail        func(format string, a ...any)
}

func newRecorder(t testing.TB) *recorder {
	return &recorder{topics: map[string][]string{}, seqs: map[string][]uint64{}, seen: map[string]bool{}, fail: t.Errorf}
}

func (h *recorder) ID() string           { return "recorder" }
func (h *recorder) Provides(b byte) bool { return b == mqtt.OnPublish }
func (h *recorder) has(dev string, seq uint64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seen[dev+":"+strconv.FormatUint(seq, 10)]
}

func (h *recorder) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	h.record(pk)
	return pk, nil
}

func (h *recorder) record(pk packets.Packet) {
	h.mu.Lock()
	stall := h.gateAt > 0 && h.count+1 == h.gateAt && strings.HasPrefix(pk.TopicName, "telemetry/")
	h.mu.Unlock()
	if stall {
		close(h.gated)
		<-h.gate
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.topics[pk.TopicName] = append(h.topics[pk.TopicName], string(pk.Payload))
	if !strings.HasPrefix(pk.TopicName, "telemetry/") {
		return
	}
	dev, seq, err := parsePayload(pk.Payload)
	if err != nil {
		h.fail("broker got bad telemetry %q on %s: %v", pk.Payload, pk.TopicName, err)
		return
	}
	if want := "telemetry/" + site + "/" + dev + "/vitals"; pk.TopicName != want {
		h.fail("payload %q on topic %s, want %s", pk.Payload, pk.TopicName, want)
	}
	h.count++
	h.seen[string(pk.Payload)] = true
	h.seqs[dev] = append(h.seqs[dev], seq)
}

func (h *recorder) distinct() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.seen)
}

// payloads returns the payloads received on topic, in order.
func (h *recorder) payloads(topic string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.topics[topic]...)
}

func (h *recorder) checkOrder(t testing.TB) {
	h.mu.Lock()
	defer h.mu.Unlock()
	checkOrder(t, h.seqs)
}

// checkOrder asserts per-device order allowing redelivery restarts: a seq may
// go back (a resend), but never jump past the highest seq seen plus one.
func checkOrder(t testing.TB, seqs map[string][]uint64) {
	t.Helper()
	for dev, ss := range seqs {
		var max uint64
		for i, s := range ss {
			if s > max+1 {
				t.Errorf("device %s: seq %d arrived (position %d) before seq %d", dev, s, i, max+1)
				break
			}
			if s > max {
				max = s
			}
		}
	}
}

func parsePayload(p []byte) (string, uint64, error) {
	dev, s, ok := strings.Cut(string(p), ":")
	if !ok {
		return "", 0, fmt.Errorf("no colon")
	}
	seq, err := strconv.ParseUint(s, 10, 64)
	return dev, seq, err
}

// broker is a real mochi broker on a loopback port.
type broker struct {
	srv  *mqtt.Server
	addr string
	once sync.Once
}

// startBroker listens on addr ("127.0.0.1:0" for a fresh port, or the address
// of a stopped broker to restart it), with TLS when cfg is not nil.
func startBroker(t testing.TB, addr string, cfg *tls.Config, rec *recorder) *broker {
	t.Helper()
	var ln net.Listener
	testutil.Eventually(t, patience, "listen on "+addr, func() bool {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err == nil
	})
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	srv := mqtt.New(&mqtt.Options{Logger: quiet})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	if rec != nil {
		if err := srv.AddHook(rec, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.AddListener(listeners.NewNet("t", ln)); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	b := &broker{srv: srv, addr: ln.Addr().String()}
	t.Cleanup(b.close)
	return b
}

func (b *broker) close() { b.once.Do(func() { _ = b.srv.Close() }) }

func (b *broker) url() string { return "tcp://" + b.addr }

// subscriber is a paho client that keeps every message it receives.
type subscriber struct {
	c    paho.Client
	mu   sync.Mutex
	msgs []paho.Message
}

func subscribe(t testing.TB, url string, cfg *tls.Config, filter string) *subscriber {
	t.Helper()
	s := &subscriber{}
	o := paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("sub-%d", time.Now().UnixNano())).
		SetTLSConfig(cfg).SetAutoReconnect(false).SetProtocolVersion(4)
	s.c = paho.NewClient(o)
	if tok := s.c.Connect(); !tok.WaitTimeout(patience) || tok.Error() != nil {
		t.Fatalf("subscriber connect: %v", tok.Error())
	}
	tok := s.c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		s.mu.Lock()
		s.msgs = append(s.msgs, m)
		s.mu.Unlock()
	})
	if !tok.WaitTimeout(patience) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	t.Cleanup(func() { s.c.Disconnect(0) })
	return s
}

func (s *subscriber) messages() []paho.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]paho.Message(nil), s.msgs...)
}

// payloads returns the payloads received on topic, in order.
func (s *subscriber) payloads(topic string) []string {
	var out []string
	for _, m := range s.messages() {
		if m.Topic() == topic {
			out = append(out, string(m.Payload()))
		}
	}
	return out
}

// checkedQueue is a real spool.Queue that fails the test when the relay
// removes an entry the broker has not received (and so could not have acked).
type checkedQueue struct {
	*spool.Queue
	t    testing.TB
	rec  *recorder
	mu   sync.Mutex
	ids  map[uint64]spool.Entry
	gone int
}

func openQueue(t testing.TB, rec *recorder) *checkedQueue {
	t.Helper()
	q, err := spool.Open(filepath.Join(t.TempDir(), "queue.db"), spool.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	return &checkedQueue{Queue: q, t: t, rec: rec, ids: map[uint64]spool.Entry{}}
}

func (q *checkedQueue) Peek(after uint64, max int) ([]spool.Entry, error) {
	es, err := q.Queue.Peek(after, max)
	q.mu.Lock()
	for _, e := range es {
		q.ids[e.Key] = spool.Entry{Key: e.Key, Dev: e.Dev, Seq: e.Seq}
	}
	q.mu.Unlock()
	return es, err
}

func (q *checkedQueue) Remove(keys ...uint64) error {
	q.mu.Lock()
	for _, k := range keys {
		e, ok := q.ids[k]
		switch {
		case !ok:
			q.t.Errorf("relay removed key %d it never peeked", k)
		case q.rec != nil && !q.rec.has(e.Dev, e.Seq):
			q.t.Errorf("relay removed %s:%d (key %d) before the broker received it", e.Dev, e.Seq, k)
		}
		q.gone++
	}
	q.mu.Unlock()
	return q.Queue.Remove(keys...)
}

// fill appends seqs from..to (inclusive) for each device.
func fill(t testing.TB, q *spool.Queue, devs []string, from, to uint64) {
	t.Helper()
	for seq := from; seq <= to; seq++ {
		for _, d := range devs {
			data := wire.Frame("telemetry/"+site+"/"+d+"/vitals", []byte(d+":"+strconv.FormatUint(seq, 10)))
			if err := q.Append(d, seq, data); err != nil {
				t.Fatalf("append %s:%d: %v", d, seq, err)
			}
		}
	}
}

func devices(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("dev-%02d", i)
	}
	return out
}

func baseConfig(urls ...string) relay.Config {
	return relay.Config{
		URLs:         urls,
		Site:         site,
		GatewayID:    gw,
		Logger:       quiet,
		BackoffMin:   20 * time.Millisecond,
		BackoffMax:   200 * time.Millisecond,
		DrainTimeout: 2 * time.Second,
	}
}

// running is a relay started by start.
type running struct {
	*relay.Relay
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// start builds a relay and runs it until the test ends.
func start(t testing.TB, cfg relay.Config, q relay.Queue) *running {
	t.Helper()
	r := build(t, cfg, q)
	r.run(t)
	return r
}

// build builds a relay registered on its own registry, without running it.
func build(t testing.TB, cfg relay.Config, q relay.Queue) *running {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	r, err := relay.New(cfg, q)
	if err != nil {
		t.Fatal(err)
	}
	return &running{Relay: r, reg: reg, done: make(chan error, 1)}
}

// run starts Run; the test's cleanup stops it.
func (r *running) run(t testing.TB) {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- r.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
}

// stop cancels Run and waits for it to return.
func (r *running) stop(t testing.TB) {
	t.Helper()
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(patience):
			t.Fatal("Run did not return")
		}
	})
}

func (r *running) metric(t testing.TB, name string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		if g := m.GetGauge(); g != nil {
			return g.GetValue()
		}
		return m.GetCounter().GetValue()
	}
	t.Fatalf("no metric %s", name)
	return 0
}
