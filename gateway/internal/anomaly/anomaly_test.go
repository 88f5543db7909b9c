package anomaly

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// bench is a detector on a synthetic clock, with the events it emitted.
type bench struct {
	t      *testing.T
	d      *Detector
	now    time.Time
	mu     sync.Mutex
	events []audit.Event
}

func newBench(t *testing.T, o Options) *bench {
	b := &bench{t: t, now: time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)}
	o.GatewayID = "gw1"
	o.Emit = func(e audit.Event) {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.events = append(b.events, e)
	}
	b.d = New(o)
	return b
}

// window feeds one window of dev (see feed), then closes it.
func (b *bench) window(dev string, msgs, rejected, reconnects int) {
	b.feed(dev, msgs, rejected, reconnects)
	b.tick()
}

// tick closes the window.
func (b *bench) tick() {
	b.now = b.now.Add(b.d.o.Window)
	b.d.Tick(b.now)
}

// feed gives dev msgs messages of which rejected are rejected, and
// reconnects connections closed and opened again.
func (b *bench) feed(dev string, msgs, rejected, reconnects int) {
	for range reconnects {
		b.d.Disconnected(dev, nil, "192.0.2.1:1000")
		b.d.Connected(dev, nil, "192.0.2.1:1001")
	}
	for i := range msgs {
		v := verdict.Verdict("")
		if i < rejected {
			v = verdict.BadSignature
		}
		b.d.Verdict(dev, v)
	}
}

// byMetric counts the events emitted, by metric.
func (b *bench) byMetric() map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := map[string]int{}
	for _, e := range b.events {
		n[e.Metric]++
	}
	return n
}

func (b *bench) expectNone(what string) {
	b.t.Helper()
	if len(b.events) > 0 {
		b.t.Fatalf("%s: %d anomalies, want none; first: %+v", what, len(b.events), b.events[0])
	}
}

// jitter is n ± spread, uniformly.
func jitter(rng *rand.Rand, n, spread int) int { return n - spread + rng.IntN(2*spread+1) }

func TestSteadyAndJitteredFleetsGiveNoAnomaly(t *testing.T) {
	b := newBench(t, Options{})
	rng := rand.New(rand.NewPCG(1, 2))
	const devices = 200
	for i := range devices {
		b.d.Connected(fmt.Sprintf("dev-%d", i), nil, "192.0.2.1:1")
	}
	// Six hours: a steady device at 1/s with jitter of a few records; a
	// noisy one at ±40 %; a slow one (one record every few minutes); every
	// device reconnects now and then (about once in two hours).
	for w := range 6 * 60 {
		for i := range devices {
			dev := fmt.Sprintf("dev-%d", i)
			msgs := jitter(rng, 60, 3)
			switch i % 3 {
			case 1:
				msgs = jitter(rng, 60, 24)
			case 2:
				msgs = rng.IntN(2)
			}
			recon := 0
			if rng.IntN(120) == 0 {
				recon = 1
			}
			if w == 0 {
				msgs /= 2 // connected mid-window
			}
			b.feed(dev, msgs, 0, recon)
		}
		b.tick()
	}
	b.expectNone("normal fleet")
	if got := b.d.Tracked(); got != devices {
		t.Fatalf("tracked %d devices, want %d", got, devices)
	}
}

func TestSlowDriftGivesNoAnomaly(t *testing.T) {
	b := newBench(t, Options{})
	b.d.Connected("drift", nil, "192.0.2.1:1")
	// From 60 to 600 messages a minute over six hours, and back down.
	for w := range 6 * 60 {
		b.window("drift", 60+w*3/2, 0, 0)
	}
	for w := range 60 {
		b.window("drift", 600-w*9, 0, 0)
	}
	b.expectNone("slow drift")
}

func TestBurstIsOneEventPerEpisode(t *testing.T) {
	reg := prometheus.NewRegistry()
	b := newBench(t, Options{Registerer: reg})
	rng := rand.New(rand.NewPCG(3, 4))
	b.d.Connected("burst", nil, "192.0.2.7:4242")
	for range 15 {
		b.window("burst", jitter(rng, 60, 3), 0, 0)
	}
	b.expectNone("before the burst")
	for range 10 { // 20 times the rhythm, for ten minutes
		b.window("burst", 1200, 0, 0)
	}
	if got := b.byMetric(); got[MessagesPerMinute] != 1 || len(b.events) != 1 {
		t.Fatalf("after one burst: %v, want one %s event", got, MessagesPerMinute)
	}
	e := b.events[0]
	if e.Verdict != Verdict || e.Dev != "burst" || e.GW != "gw1" || e.Remote != "192.0.2.7:4242" || e.TS == 0 {
		t.Fatalf("event %+v", e)
	}
	if *e.Figure != 1200 || *e.Baseline < 55 || *e.Baseline > 65 || *e.Threshold < 150 || *e.Threshold > 250 {
		t.Fatalf("figure %v baseline %v threshold %v: want 1200, about 60, about 180", *e.Figure, *e.Baseline, *e.Threshold)
	}
	if !strings.Contains(e.Detail, "messages per minute 1200 above the threshold") || !strings.Contains(e.Detail, "not blocked") {
		t.Fatalf("detail %q", e.Detail)
	}
	// Back to normal: the episode ends; a new burst is a new episode.
	for range 10 {
		b.window("burst", jitter(rng, 60, 3), 0, 0)
	}
	if len(b.events) != 1 {
		t.Fatalf("back to normal: %d events, want still 1", len(b.events))
	}
	for range 3 {
		b.window("burst", 1200, 0, 0)
	}
	if got := b.byMetric()[MessagesPerMinute]; got != 2 {
		t.Fatalf("second burst: %d events, want 2", got)
	}
	series := gather(t, reg)
	if got := series["vitalgate_anomalies_total{metric="+MessagesPerMinute+"}"]; got != 2 {
		t.Fatalf("vitalgate_anomalies_total{metric=%q} = %v, want 2 (all: %v)", MessagesPerMinute, got, series)
	}
	if got, ok := series["vitalgate_anomalies_total{metric="+RejectedShare+"}"]; !ok || got != 0 || series["vitalgate_anomaly_devices"] != 1 {
		t.Fatalf("series %v: want every metric registered at 0, and 1 device tracked", series)
	}
}

func TestLastingChangeBecomesTheBaseline(t *testing.T) {
	b := newBench(t, Options{})
	b.d.Connected("dev", nil, "192.0.2.1:1")
	for range 15 {
		b.window("dev", 60, 0, 0)
	}
	for range 6 * 60 { // reconfigured: 4 times the rate, for good
		b.window("dev", 240, 0, 0)
	}
	if len(b.events) != 1 {
		t.Fatalf("%d events, want 1", len(b.events))
	}
	if s := b.d.devices["dev"].base[0]; s.alarm || s.mean < 200 {
		t.Fatalf("after six hours at the new rate: in episode %v, baseline %.0f; want learned", s.alarm, s.mean)
	}
}

func TestFlappingConnection(t *testing.T) {
	b := newBench(t, Options{})
	b.d.Connected("flap", nil, "192.0.2.1:1")
	for range 15 {
		b.window("flap", 60, 0, 0)
	}
	b.window("flap", 60, 0, 1) // an occasional reconnect
	b.window("flap", 60, 0, 0)
	b.expectNone("one reconnect")
	for range 10 { // every three seconds
		b.window("flap", 40, 0, 20)
	}
	got := b.byMetric()
	if got[ReconnectsPerHour] != 1 || len(b.events) != 1 {
		t.Fatalf("flapping: %v, want one %s event (and no message anomaly: no window was whole)", got, ReconnectsPerHour)
	}
	if f := *b.events[0].Figure; f < 60 {
		t.Fatalf("figure %v, want above the floor of 60", f)
	}
}

func TestRejectedShare(t *testing.T) {
	b := newBench(t, Options{})
	b.d.Connected("dev", nil, "192.0.2.1:1")
	for range 15 {
		b.window("dev", 60, 0, 0)
	}
	b.window("dev", 60, 1, 0)
	b.window("dev", 5, 5, 0) // too few messages to judge a share
	b.expectNone("one rejection")
	b.window("dev", 60, 30, 0)
	b.window("dev", 60, 30, 0)
	if got := b.byMetric(); got[RejectedShare] != 1 || len(b.events) != 1 || *b.events[0].Figure != 0.5 {
		t.Fatalf("half rejected: %v, want one %s event with figure 0.5", got, RejectedShare)
	}
	// Overload is the gateway's doing, not the device's.
	for range 40 {
		b.d.Verdict("dev", verdict.Overloaded)
	}
	b.tick()
	if len(b.events) != 1 {
		t.Fatalf("overload counted as rejections: %d events", len(b.events))
	}
}

func TestNothingReportedDuringWarmup(t *testing.T) {
	b := newBench(t, Options{Warmup: 10 * time.Minute})
	b.d.Connected("new", nil, "192.0.2.1:1")
	for range 5 {
		b.window("new", 60, 0, 0)
	}
	for range 5 {
		b.window("new", 1200, 50, 20)
	}
	b.expectNone("warm-up")
	// The short warm-up of a test: 3 windows of 1 s.
	b = newBench(t, Options{Window: time.Second, Warmup: 3 * time.Second})
	b.d.Connected("new", nil, "192.0.2.1:1")
	for range 5 {
		b.window("new", 5, 0, 0)
	}
	b.window("new", 100, 0, 0)
	if got := b.byMetric(); got[MessagesPerMinute] != 1 || *b.events[0].Figure != 6000 {
		t.Fatalf("1-second windows: %v, want one event (figure per minute 6000)", got)
	}
}

func TestDeviceLimitAndForgetting(t *testing.T) {
	b := newBench(t, Options{MaxDevices: 2, Window: time.Hour})
	for _, id := range []string{"a", "b", "c"} {
		b.d.Connected(id, nil, "192.0.2.1:1")
	}
	if got := b.d.Tracked(); got != 2 {
		t.Fatalf("tracked %d, want the limit of 2", got)
	}
	b.d.Verdict("c", "") // untracked: ignored
	b.d.Disconnected("a", nil, "192.0.2.1:1")
	for range 23 {
		b.window("b", 60, 0, 0)
	}
	if got := b.d.Tracked(); got != 2 {
		t.Fatalf("after 23 h: tracked %d, want 2", got)
	}
	b.window("b", 60, 0, 0)
	if _, ok := b.d.devices["a"]; ok || b.d.Tracked() != 1 {
		t.Fatalf("a day without a connection: a still tracked (%d devices)", b.d.Tracked())
	}
	b.d.Connected("c", nil, "192.0.2.1:1")
	if got := b.d.Tracked(); got != 2 {
		t.Fatalf("after forgetting: tracked %d, want c taken in", got)
	}
}

// TestConcurrentUse runs the observer methods and Tick at once, for the
// race detector.
func TestConcurrentUse(t *testing.T) {
	b := newBench(t, Options{Window: time.Second, Warmup: time.Second})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 2000 {
				dev := fmt.Sprintf("d%d-%d", g, i%50)
				b.d.Connected(dev, nil, "192.0.2.1:1")
				b.d.Verdict(dev, "")
				b.d.Verdict(dev, verdict.Replay)
				b.d.Disconnected(dev, nil, "192.0.2.1:1")
			}
		})
	}
	for range 200 {
		b.tick()
	}
	wg.Wait()
	if got := b.d.Tracked(); got != 200 {
		t.Fatalf("tracked %d, want 200", got)
	}
}

// BenchmarkVerdict is the cost on the message path.
func BenchmarkVerdict(b *testing.B) {
	d := New(Options{})
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%05d", i)
		d.Connected(ids[i], nil, "192.0.2.1:1")
	}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			d.Verdict(ids[i%len(ids)], "")
			i++
		}
	})
}

// gather reads reg's counters and gauges as "name{label=value}" -> value.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			out[key] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return out
}

// BenchmarkTick is one window's close for 20,000 devices (the default
// limit), during which new devices wait for the map.
func BenchmarkTick(b *testing.B) {
	d := New(Options{})
	for i := range 20000 {
		id := fmt.Sprintf("dev-%05d", i)
		d.Connected(id, nil, "192.0.2.1:1")
		d.Verdict(id, "")
	}
	now := time.Now()
	for b.Loop() {
		now = now.Add(time.Minute)
		d.Tick(now)
	}
}
