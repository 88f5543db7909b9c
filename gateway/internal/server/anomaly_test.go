package server

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/gateway/internal/anomaly"
	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/internal/fleet"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// anomalies lists the anomaly events at the cloud, by device.
func (a *app) anomalies() map[string][]audit.Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string][]audit.Event{}
	for _, s := range a.events {
		var ev audit.Event
		if json.Unmarshal([]byte(s), &ev) == nil && ev.Verdict == anomaly.Verdict {
			out[ev.Dev] = append(out[ev.Dev], ev)
		}
	}
	return out
}

// TestAnomaliesOnTheRealGateway runs real devices against the gateway with
// 2-second windows and a 6-second warm-up: a device that bursts to 20 times
// its rhythm (every message still accepted) and one whose connection flaps
// each get an anomaly event with its figures at the cloud; their normal
// neighbours get none.
func TestAnomaliesOnTheRealGateway(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Anomaly.Window, c.Anomaly.Warmup = 2*time.Second, 6*time.Second
		// Reconnects are counted over 10 windows (20 s here): 3 in that time.
		c.Anomaly.ReconnectsFloor = 500
		// Room for the burst (4/s to 80/s) within the rate limit.
		c.Rate.Messages, c.Rate.Burst = 200, 400
	})
	a := e.app("ssl://" + e.gw.Cloud().AppsAddr())
	fleetOf := func(prefix, mode string, devices int) fleet.Config {
		c := e.attackFleet(prefix, mode, devices, 1)
		c.Rate = 4
		c.AttackAfter = 12 * time.Second
		// Flapping at this pace in 2-second windows is what flapping every
		// few seconds is in 1-minute ones: several reconnects a window.
		c.FlapEvery = 600 * time.Millisecond
		c.Duration = 26 * time.Second
		return c
	}
	var wg sync.WaitGroup
	reports := make([]fleet.Report, 2)
	for i, c := range []fleet.Config{fleetOf("burst", fleet.AttackBurst, 4), fleetOf("flap", fleet.AttackFlap, 3)} {
		wg.Go(func() { reports[i] = runAttack(t, c) })
	}
	wg.Wait()
	burst, flap := reports[0], reports[1]
	t.Logf("burst: %+v %v; flap: %+v %v", *burst.Attack, burst.Stats.Codes, *flap.Attack, flap.Stats.Codes)
	if burst.Attack.Sent == 0 || burst.Attack.Codes["0x00"] != burst.Attack.Sent {
		t.Errorf("burst: %d messages sent in the burst, codes %v: want all accepted (within the rate limit)", burst.Attack.Sent, burst.Attack.Codes)
	}
	if flap.Attack.Sent < 10 {
		t.Errorf("flap: %d drops, want at least 10", flap.Attack.Sent)
	}

	testutil.Eventually(t, 20*time.Second, "anomaly events of burst-00001 and flap-00001 at the cloud", func() bool {
		got := a.anomalies()
		return len(got["burst-00001"]) > 0 && len(got["flap-00001"]) > 0
	})
	got := a.anomalies()
	for dev, evs := range got {
		if dev != "burst-00001" && dev != "flap-00001" {
			t.Errorf("normal device %s: %d anomaly events, first %+v", dev, len(evs), evs[0])
		}
	}
	check := func(dev, metric string) {
		ev := got[dev][0]
		if ev.Metric != metric || ev.Figure == nil || ev.Baseline == nil || ev.Threshold == nil ||
			*ev.Figure <= *ev.Threshold || *ev.Threshold <= *ev.Baseline || ev.Detail == "" || ev.Remote == "" {
			t.Errorf("%s: %d events, first %+v; want %s with figure > threshold > baseline", dev, len(got[dev]), ev, metric)
			return
		}
		t.Logf("%s: %s figure %.0f threshold %.0f baseline %.1f: %s", dev, ev.Metric, *ev.Figure, *ev.Threshold, *ev.Baseline, ev.Detail)
	}
	check("burst-00001", anomaly.MessagesPerMinute)
	check("flap-00001", anomaly.ReconnectsPerHour)
	for _, m := range []string{anomaly.MessagesPerMinute, anomaly.ReconnectsPerHour} {
		if n := e.metric("vitalgate_anomalies_total", m); n < 1 {
			t.Errorf("vitalgate_anomalies_total{metric=%q} = %v", m, n)
		}
	}
}
