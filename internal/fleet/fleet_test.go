package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"
)

// runFleet starts Run in the background; stop cancels it and returns its
// result.
func runFleet(t *testing.T, cfg Config) (last *atomic.Pointer[Stats], stop func() (Report, error)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	last = new(atomic.Pointer[Stats])
	type out struct {
		r   Report
		err error
	}
	ch := make(chan out, 1)
	go func() {
		r, err := Run(ctx, cfg, func(s Stats) { last.Store(&s) })
		ch <- out{r, err}
	}()
	var done *out
	stop = func() (Report, error) {
		if done == nil {
			cancel()
			o := <-ch
			done = &o
		}
		return done.r, done.err
	}
	t.Cleanup(func() { stop() })
	return last, stop
}

func testConfig(dir, addr string) Config {
	cfg := Default()
	cfg.PKI = dir
	cfg.Gateway = addr
	cfg.Devices = 2
	cfg.Rate = 50
	cfg.Progress = 20 * time.Millisecond
	cfg.Timeout = 5 * time.Second
	cfg.AckTimeout = 5 * time.Second
	cfg.Updates = false // the stand-in takes records only
	return cfg
}

// checkContiguous asserts the accepted seqs of dev are from, from+1, ...
func checkContiguous(t *testing.T, s *standIn, dev string, from uint64) []telemetry.Record {
	t.Helper()
	recs := s.records(dev)
	for i, r := range recs {
		if want := from + uint64(i); r.Seq != want {
			t.Fatalf("%s: record %d has seq %d, want %d", dev, i, r.Seq, want)
		}
	}
	return recs
}

func TestReconnectKeepsSeq(t *testing.T) {
	dir := newPKI(t)
	s := startStandIn(t, dir, "")
	cfg := testConfig(dir, s.addr)
	cfg.MQTT = MQTTMix
	_, stop := runFleet(t, cfg)

	waitFor(t, "first records", 20*time.Second, func() bool { return s.count() >= 20 })
	s.kick()
	state := func() string {
		s.mu.Lock()
		defer s.mu.Unlock()
		return fmt.Sprintf("connections 3.1.1 %d, 5 %d; accepted dev-00001 %d, dev-00002 %d",
			s.versions[4], s.versions[5], len(s.accepted["dev-00001"]), len(s.accepted["dev-00002"]))
	}
	waitFor(t, "records after reconnect", 30*time.Second, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.versions[4]+s.versions[5] >= 4 && len(s.accepted["dev-00001"]) >= 40 && len(s.accepted["dev-00002"]) >= 40
	}, state)
	rep, err := stop()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"dev-00001", "dev-00002"} {
		checkContiguous(t, s, id, 1)
	}
	s.mu.Lock()
	v3, v5 := s.versions[4], s.versions[5]
	s.mu.Unlock()
	if v3 < 2 || v5 < 2 {
		t.Errorf("connections: %d MQTT 3.1.1, %d MQTT 5: want both, twice", v3, v5)
	}
	if rep.Stats.Connects < 4 || rep.Stats.Acked < 80 {
		t.Errorf("stats %+v", rep.Stats)
	}
	if rep.Kinds["spo2"] != 1 || rep.Kinds["bp"] != 1 {
		t.Errorf("kinds %v", rep.Kinds)
	}
}

// A publish whose PUBACK never comes (the connection stays up, so nothing
// reports it lost) makes the device drop that connection, reconnect and
// resend the message: no seq is skipped and the device goes on. Both
// protocol versions.
func TestAckTimeoutReconnects(t *testing.T) {
	for _, v := range []int{MQTT3, MQTT5} {
		t.Run(fmt.Sprint(v), func(t *testing.T) {
			dir := newPKI(t)
			s := startStandIn(t, dir, "")
			s.mu.Lock()
			s.withhold = 1
			s.mu.Unlock()
			cfg := testConfig(dir, s.addr)
			cfg.Devices, cfg.MQTT, cfg.Rate = 1, v, 20
			cfg.AckTimeout = 500 * time.Millisecond
			_, stop := runFleet(t, cfg)
			state := func() string {
				s.mu.Lock()
				defer s.mu.Unlock()
				return fmt.Sprintf("connections %v, accepted %d, withheld left %d", s.versions, len(s.accepted["dev-00001"]), s.withhold)
			}
			waitFor(t, "records after the lost PUBACK", 30*time.Second, func() bool {
				return len(s.records("dev-00001")) >= 20
			}, state)
			rep, err := stop()
			if err != nil {
				t.Fatal(err)
			}
			checkContiguous(t, s, "dev-00001", 1)
			if rep.Stats.Connects < 2 {
				t.Errorf("%d connections, want a reconnect after the ack timeout (%s)", rep.Stats.Connects, state())
			}
		})
	}
}

func TestBacklogWhileAway(t *testing.T) {
	dir := newPKI(t)
	s := startStandIn(t, dir, "")
	addr := s.addr
	cfg := testConfig(dir, addr)
	cfg.Devices = 1
	last, stop := runFleet(t, cfg)

	waitFor(t, "first records", 20*time.Second, func() bool { return s.count() >= 10 })
	s.stop()
	atStop := len(s.records("dev-00001"))
	waitFor(t, "a backlog", 20*time.Second, func() bool {
		st := last.Load()
		return st != nil && st.Connected == 0 && st.Buffered >= 20
	})
	s.start(addr)
	waitFor(t, "the backlog delivered", 30*time.Second, func() bool {
		return len(s.records("dev-00001")) >= atStop+40
	})
	rep, err := stop()
	if err != nil {
		t.Fatal(err)
	}
	recs := checkContiguous(t, s, "dev-00001", 1)
	// Records measured while the gateway was away arrive late but with
	// their measurement time: some gap between consecutive ts is the
	// outage, and no record was lost around it.
	if rep.Stats.Dropped != 0 {
		t.Errorf("dropped %d", rep.Stats.Dropped)
	}
	if len(recs) < atStop+40 {
		t.Fatalf("%d records", len(recs))
	}
}

func TestBufferBound(t *testing.T) {
	dir := newPKI(t)
	s := startStandIn(t, dir, "")
	cfg := testConfig(dir, s.addr)
	cfg.Devices = 1
	cfg.Buffer = 10
	cfg.Rate = 200
	last, stop := runFleet(t, cfg)
	waitFor(t, "first records", 20*time.Second, func() bool { return s.count() >= 5 })
	s.stop()
	waitFor(t, "drops", 20*time.Second, func() bool {
		st := last.Load()
		return st != nil && st.Dropped >= 20
	})
	if st := last.Load(); st.Buffered > 10 {
		t.Errorf("buffered %d beyond the bound of 10", st.Buffered)
	}
	stop()
}

func TestRerunContinuesSeq(t *testing.T) {
	dir := newPKI(t)
	s := startStandIn(t, dir, "")
	cfg := testConfig(dir, s.addr)
	cfg.Devices = 1
	cfg.State = filepath.Join(t.TempDir(), "state")

	_, stop := runFleet(t, cfg)
	waitFor(t, "first run", 20*time.Second, func() bool { return s.count() >= 5 })
	if _, err := stop(); err != nil {
		t.Fatal(err)
	}
	first := s.records("dev-00001")
	lastSeq := first[len(first)-1].Seq

	_, stop = runFleet(t, cfg)
	waitFor(t, "second run", 20*time.Second, func() bool { return len(s.records("dev-00001")) >= len(first)+5 })
	if _, err := stop(); err != nil {
		t.Fatal(err)
	}
	all := s.records("dev-00001")
	next := all[len(first)]
	if next.Seq <= lastSeq {
		t.Fatalf("second run started at seq %d, first ended at %d", next.Seq, lastSeq)
	}
	if s.replays != 0 {
		t.Errorf("%d replays", s.replays)
	}
}

func TestDurationAndDrain(t *testing.T) {
	dir := newPKI(t)
	s := startStandIn(t, dir, "")
	cfg := testConfig(dir, s.addr)
	cfg.Duration = 500 * time.Millisecond
	rep, err := Run(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := rep.Stats
	if st.Generated == 0 || st.Acked != st.Generated || st.Buffered != 0 || st.Connected != 0 {
		t.Errorf("after drain: %+v", st)
	}
	if n := s.count(); uint64(n) != st.Acked {
		t.Errorf("stand-in stored %d, fleet acked %d", n, st.Acked)
	}
	if st.Codes["0x00"] != st.Acked || st.P50 <= 0 || st.P99 < st.P50 {
		t.Errorf("codes %v p50 %v p99 %v", st.Codes, st.P50, st.P99)
	}
	line := st.String()
	if !strings.HasPrefix(line, "connected 0/2 sent ") || !strings.Contains(line, " rejected 0 | ") || !strings.Contains(line, " msg/s p50 ") {
		t.Errorf("progress line %q", line)
	}
}

func TestRevokedRefused(t *testing.T) {
	dir := newPKI(t)
	s := startStandInRevocations(t, dir)
	cfg := testConfig(dir, s.addr)
	cfg.Attack = AttackRevoked
	cfg.Attackers = 2
	cfg.Duration = 300 * time.Millisecond
	rep, err := Run(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := rep.Attack
	if a == nil || a.Expected != OutcomeTLSRefused || a.Sent < 2 || a.Matched != a.Sent || a.Connected != 0 {
		t.Fatalf("attack report %+v", a)
	}
	if rep.Stats.Acked == 0 {
		t.Errorf("the normal devices should still be served: %+v", rep.Stats)
	}
}

func TestUnreachable(t *testing.T) {
	dir := newPKI(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = Run(context.Background(), testConfig(dir, addr), nil)
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("err %v", err)
	}
	if want := fmt.Sprintf("gateway %s unreachable: connection refused", addr); err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

func TestCertificatesMissing(t *testing.T) {
	_, err := Run(context.Background(), testConfig(t.TempDir(), "127.0.0.1:1"), nil)
	if !errors.Is(err, ErrCertificates) {
		t.Fatalf("no PKI: %v", err)
	}
	dir := newPKI(t)
	if err := os.Remove(filepath.Join(dir, pki.FileDeviceCAKey)); err != nil {
		t.Fatal(err)
	}
	_, err = Run(context.Background(), testConfig(dir, "127.0.0.1:1"), nil)
	if !errors.Is(err, ErrCertificates) || !strings.Contains(err.Error(), "device-ca.key") {
		t.Fatalf("no device CA key: %v", err)
	}
}

func TestValidate(t *testing.T) {
	cfg := Default()
	cfg.Devices = MaxDevices + 1
	cfg.MQTT = 4
	cfg.QoS = 2
	cfg.Attack = "nope"
	cfg.Kinds = []string{"spo2", "x"}
	err := cfg.Validate()
	for _, f := range []string{"devices", "mqtt", "qos", "attack", "kinds"} {
		if err == nil || !strings.Contains(err.Error(), f+":") {
			t.Errorf("want a %s problem in %v", f, err)
		}
	}
	if err := Default().Validate(); err != nil {
		t.Errorf("default: %v", err)
	}
}

// Burst: after AttackAfter the attacker sends BurstFactor times its rate,
// valid records in order, while its neighbour keeps its rate. Flap: after
// AttackAfter the attacker's connection drops every FlapEvery or so, and
// no record is lost across the drops.
func TestBurstAndFlap(t *testing.T) {
	dir := newPKI(t)
	s := startStandIn(t, dir, "")
	for _, mode := range []string{AttackBurst, AttackFlap} {
		t.Run(mode, func(t *testing.T) {
			cfg := testConfig(dir, s.addr)
			cfg.Prefix, cfg.Attack, cfg.Attackers = mode, mode, 1
			cfg.Rate, cfg.AttackAfter, cfg.FlapEvery = 4, time.Second, 300*time.Millisecond
			cfg.Duration, cfg.State = 4*time.Second, "-"
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			rep, err := Run(ctx, cfg, nil) // burst: 4 records in the first second, then 80 a second
			attacker, normal := mode+"-00001", mode+"-00002"
			if err != nil {
				t.Fatal(err)
			}
			a, n := len(checkContiguous(t, s, attacker, 1)), len(checkContiguous(t, s, normal, 1))
			t.Logf("%s: attacker %d records, normal %d; attack %+v", mode, a, n, *rep.Attack)
			switch mode {
			case AttackBurst:
				if a < 5*n || rep.Attack.Codes["0x00"] != rep.Attack.Sent || rep.Attack.Sent < 20 {
					t.Errorf("burst: attacker %d records, normal %d; %d burst messages, codes %v", a, n, rep.Attack.Sent, rep.Attack.Codes)
				}
			case AttackFlap:
				if rep.Attack.Sent < 3 || rep.Stats.Connects < 2+rep.Attack.Sent || a < n/2 {
					t.Errorf("flap: %d drops, %d connects, attacker %d records, normal %d", rep.Attack.Sent, rep.Stats.Connects, a, n)
				}
			}
		})
	}
}
