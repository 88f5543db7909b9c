package bench

import (
	"context"
	"encoding/json"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

func TestPercentile(t *testing.T) {
	ms := func(n ...int) []time.Duration {
		out := make([]time.Duration, len(n))
		for i, v := range n {
			out[i] = time.Duration(v) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	for _, tc := range []struct {
		name string
		in   []time.Duration
		q    float64
		want time.Duration
	}{
		{"empty", nil, 0.5, 0},
		{"one", ms(7), 0.99, 7 * time.Millisecond},
		{"p50 of 1..100", ms(hundred...), 0.50, 50 * time.Millisecond},
		{"p99 of 1..100", ms(hundred...), 0.99, 99 * time.Millisecond},
		{"p100", ms(hundred...), 1, 100 * time.Millisecond},
		{"p0 is the minimum", ms(hundred...), 0, time.Millisecond},
		{"above 1 clamps", ms(1, 2, 3), 1.5, 3 * time.Millisecond},
		{"p50 of 4 is the 2nd", ms(1, 2, 3, 4), 0.5, 2 * time.Millisecond},
	} {
		if got := Percentile(tc.in, tc.q); got != tc.want {
			t.Errorf("%s: Percentile(q=%v) = %v, want %v", tc.name, tc.q, got, tc.want)
		}
	}
}

func TestLatenciesBoundAndSummary(t *testing.T) {
	l := NewLatencies(10)
	for i := 20; i >= 1; i-- { // unsorted input; only the first 10 are kept
		l.Add(time.Duration(i) * time.Millisecond)
	}
	n, p50, p99 := l.Summary()
	if n != 10 || p50 != 15*time.Millisecond || p99 != 20*time.Millisecond {
		t.Fatalf("Summary = %d, %v, %v; want 10 samples (20..11 ms), p50 15ms, p99 20ms", n, p50, p99)
	}
	l.Reset()
	if n, _, _ := l.Summary(); n != 0 {
		t.Fatalf("after Reset: %d samples", n)
	}
}

func TestRate(t *testing.T) {
	if r := Rate(500, 2*time.Second); r != 250 {
		t.Fatalf("Rate = %v", r)
	}
	if r := Rate(5, 0); r != 0 {
		t.Fatalf("Rate over 0 = %v", r)
	}
}

func TestParseProc(t *testing.T) {
	status := []byte("Name:\tgateway\nVmPeak:\t  999 kB\nVmRSS:\t   12345 kB\nThreads:\t9\n")
	if rss, err := parseVmRSS(status); err != nil || rss != 12345<<10 {
		t.Fatalf("parseVmRSS = %d, %v", rss, err)
	}
	if _, err := parseVmRSS([]byte("Name:\tx\n")); err == nil {
		t.Fatal("no VmRSS: want an error")
	}
	// The command name may hold spaces and parentheses.
	stat := []byte("4242 (my (odd) gw) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 1000 200")
	if cpu, err := parseCPU(stat); err != nil || cpu != 3*time.Second {
		t.Fatalf("parseCPU = %v, %v; want 3s (300 ticks)", cpu, err)
	}
	if _, err := parseCPU([]byte("1 (x) S 1 2")); err == nil {
		t.Fatal("short stat: want an error")
	}
	self, err := ProcStat(0)
	if err != nil || self.RSS <= 0 {
		t.Fatalf("ProcStat(self) = %+v, %v", self, err)
	}
}

func TestConnectPacket(t *testing.T) {
	got := connectPacket("dev-1", 300)
	want := []byte{0x10, 17, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0x01, 0x2c, 0, 5, 'd', 'e', 'v', '-', '1'}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("connectPacket = % x\nwant            % x", got, want)
	}
}

func TestLatencyLookup(t *testing.T) {
	d := &Devices{ids: []*Identity{{ID: "a"}, {ID: "b"}}, index: map[string]int{"a": 0, "b": 1}}
	if _, ok := d.Latency("a:1", time.Now()); ok {
		t.Fatal("no drive yet: want false")
	}
	sent := time.Now().Add(-5 * time.Millisecond)
	t2 := newTracker([][]Msg{{{Seq: 10}, {Seq: 11}}, {{Seq: 1}}})
	t2.at[0][1].Store(sent.UnixNano())
	d.track.Store(t2)
	now := sent.Add(5 * time.Millisecond)
	for _, tc := range []struct {
		id   string
		ok   bool
		want time.Duration
	}{
		{"a:11", true, 5 * time.Millisecond},
		{"a:10", false, 0}, // not sent
		{"a:12", false, 0}, // beyond the drive
		{"a:9", false, 0},  // before it
		{"b:x", false, 0},
		{"c:1", false, 0},
		{"a11", false, 0},
	} {
		got, ok := d.Latency(tc.id, now)
		if ok != tc.ok || got != tc.want {
			t.Errorf("Latency(%q) = %v, %v; want %v, %v", tc.id, got, ok, tc.want, tc.ok)
		}
	}
}

// TestResultJSON pins the keys of the JSON line that docs/performance.md
// and scripts read.
func TestResultJSON(t *testing.T) {
	b, err := json.Marshal(Result{})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"nproc", "cpu", "devices", "validated_msgs_per_s", "accepted_msgs_per_s",
		"verify_only_msgs_per_s", "ratio", "gateway_cpu_share", "harness_cpu_share", "ratio_per_cpu_s",
		"latency_rate_msgs_per_s", "latency_p50_ms", "latency_p99_ms", "idle_connections",
		"gateway_rss_idle_bytes", "gateway_rss_per_conn_bytes", "gateway_heap_idle_bytes",
		"handshakes_full_per_s", "handshakes_resumed_per_s", "baseline_mochi_msgs_per_s", "validated_vs_baseline",
		"baseline_mochi_per_cpu_s", "validated_vs_baseline_per_cpu_s", "validated_vs_baseline_min", "validated_vs_baseline_max",
		"gateway_cpus", "runs", "ratio_min", "ratio_max", "latency_p99_ms_min", "latency_p99_ms_max",
		"storm_connected_msgs_per_s", "storm_connected_ack_p99_ms", "storm_connected_handshakes_full_per_s",
		"storm_connected_ack_p99_ms_min", "storm_connected_ack_p99_ms_max"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON line lacks %q", k)
		}
	}
	if strings.Contains(string(b), "\n") {
		t.Fatal("JSON line spans lines")
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (Config{}).Defaults().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	err := Config{Devices: 20000, Idle: -1, Duration: time.Millisecond, Rate: -1, Workers: 0, Kinds: []string{"nope"}}.Validate()
	if err == nil {
		t.Fatal("want errors")
	}
	for _, field := range []string{"devices", "idle", "duration", "rate", "workers", "kinds"} {
		if !strings.Contains(err.Error(), field+":") {
			t.Errorf("error does not name %s: %v", field, err)
		}
	}
}

// TestBaselineRoundTrip drives pre-signed records through the bare mochi
// baseline and counts them at its subscriber, and checks verify-only over
// the same messages: the harness's moving parts, over real TLS.
func TestBaselineRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{Site: "site1", GatewayID: "gw1"}); err != nil {
		t.Fatal(err)
	}
	ids, err := pki.IssueDevices(dir, 3, "t", pki.P256)
	if err != nil {
		t.Fatal(err)
	}
	devs, err := LoadIdentities(dir, ids)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := PreSign(devs, []string{"spo2", "ecg"}, 5, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := VerifyOnly(devs, msgs, 2, time.Minute, 1); err != nil || n <= 0 {
		t.Fatalf("VerifyOnly = %v, %v", n, err)
	}
	b, err := StartBaseline(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sub, err := Subscribe(SubscriberConfig{URL: b.SubscriberURL(), ClientID: "t-sub", Filter: "devices/+/telemetry"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	roots, err := pki.LoadPool(filepath.Join(dir, pki.FileCA))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := Connect(ctx, b.DeviceAddr(), roots, devs, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.Drive(ctx, msgs, 0, nil)
	if c := d.Counts(); c.Acked != 15 || c.Sent != 15 || c.Rejected+c.Failed != 0 {
		t.Fatalf("counts %+v, want 15 sent and acked", c)
	}
	if !testutil.Poll(20*time.Second, func() bool { return sub.Count() >= 15 }) {
		t.Fatalf("subscriber got %d of 15", sub.Count())
	}
	// Idle connections and a short storm against the same broker.
	ic, err := Idle(ctx, b.DeviceAddr(), roots, devs, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ic.Len() != 3 {
		t.Fatalf("idle: %d open", ic.Len())
	}
	ic.Close()
	res := Storm(ctx, b.DeviceAddr(), roots, devs[:2], true, 300*time.Millisecond)
	if res.Connects == 0 {
		t.Fatalf("storm: no connection completed (%+v)", res)
	}
}

func TestBucketQuantile(t *testing.T) {
	les := []float64{.001, .01, .1}
	before := []float64{10, 20, 30, 30}
	for _, c := range []struct {
		after []float64
		q     float64
		want  float64
	}{
		{[]float64{110, 120, 130, 130}, 0.99, .001}, // all 100 new ones under 1 ms
		{[]float64{60, 119, 130, 130}, 0.99, .01},   // 99 of 100 under 10 ms
		{[]float64{60, 118, 130, 130}, 0.99, .1},    // 98 under 10 ms
		{[]float64{60, 118, 129, 130}, 0.99, .1},    // 99 under 100 ms
		{[]float64{60, 118, 128, 130}, 0.99, -1},    // 2 of 100 over the last bound
		{[]float64{10, 20, 30, 30}, 0.99, 0},        // nothing observed
		{nil, 0.99, 0},                              // gateway did not answer
	} {
		if got := bucketQuantile(les, before, c.after, c.q); got != c.want {
			t.Errorf("after %v: %v, want %v", c.after, got, c.want)
		}
	}
}
