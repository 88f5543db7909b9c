// Package anomaly learns each device's behaviour on the gateway and reports
// a deviation from it as a security event "anomaly": messages per minute,
// reconnects per hour and the share of rejected messages, each against a
// baseline learned online per device. It only reports: telemetry keeps
// flowing, and quarantine stays the guard's rule-based decision.
//
// A [Detector] is an ingest observer. Its callbacks on the connection and
// message paths only add to per-device counters; [Detector.Tick], once per
// window (from [Detector.Run], or a test's clock), closes the window,
// judges each figure and learns it. A figure is an anomaly when it exceeds
// max(factor × baseline, baseline + deviations × deviation, floor), once the
// device has been watched for the warm-up; an episode gives one event, and
// ends after a few windows back under the threshold.
package anomaly

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// Verdict is the security event's verdict.
const Verdict = "anomaly"

// The metrics judged, as the event's Metric and the label of
// vitalgate_anomalies_total.
const (
	MessagesPerMinute = "messages_per_minute" // messages (any verdict) in a window the device was connected throughout
	ReconnectsPerHour = "reconnects_per_hour" // connections after the first, over the last reconnectSpan windows
	RejectedShare     = "rejected_share"      // rejected messages / messages, in a window of at least minMessages
)

// Metrics lists the metrics judged.
func Metrics() []string { return []string{MessagesPerMinute, ReconnectsPerHour, RejectedShare} }

const (
	reconnectSpan = 10               // windows over which reconnects are counted
	minMessages   = 10               // messages a window needs for its rejected share to be judged
	forgetAfter   = 24 * time.Hour   // a device without a connection this long is forgotten
	defaultWindow = time.Minute      // Options.Window
	defaultWarmup = 10 * time.Minute // Options.Warmup
)

// Options configure a [Detector]. Zero fields take the defaults in
// brackets.
type Options struct {
	Window     time.Duration // a figure's window [1m]
	Warmup     time.Duration // history a device needs before it is judged [10m]
	Factor     float64       // threshold at least factor × baseline [3]
	Deviations float64       // threshold at least baseline + deviations × deviation [6]
	Floors     Floors        // threshold at least the floor
	MaxDevices int           // devices tracked at once; further ones are not [20000]
	GatewayID  string        // the events' gw
	// Emit receives each anomaly event; it is called from Tick, never on
	// the message path.
	Emit       func(audit.Event)
	Registerer prometheus.Registerer // nil: metrics not registered
	Log        *slog.Logger
}

// Floors are the absolute lowest thresholds, which a device with a baseline
// near zero must cross to be reported.
type Floors struct {
	MessagesPerMinute float64 // [10]
	ReconnectsPerHour float64 // [60]
	RejectedShare     float64 // [0.1]
}

// Detector tracks devices and reports anomalies. Its observer methods are
// safe for concurrent use and never block for long.
type Detector struct {
	o       Options
	lim     [3]limits // by metric, in the order of Metrics
	found   *prometheus.CounterVec
	mu      sync.RWMutex // the map; counters are atomic under the read lock
	devices map[string]*device
	full    atomic.Bool // MaxDevices reached (logged once)
	tickMu  sync.Mutex  // one Tick at a time
}

// device is one device's state: counters of the current window (written
// on the message and connection paths) and what Tick keeps. Fixed size.
type device struct {
	msgs, rejects, connects atomic.Uint32
	open                    atomic.Int32 // connections open now
	dropped                 atomic.Bool  // a connection closed in this window
	remote                  atomic.Pointer[string]

	// Tick's own.
	wasOpen bool
	recent  [reconnectSpan]uint16 // reconnects of the last windows, a ring
	pos     uint8
	idle    int32 // windows in a row without a connection
	base    [3]baseline
}

// New returns a detector; start [Detector.Run] for it to judge.
func New(o Options) *Detector {
	o = o.withDefaults()
	warm := int32(max(1, (o.Warmup+o.Window-1)/o.Window))
	d := &Detector{o: o, devices: make(map[string]*device)}
	for i, floor := range []float64{o.Floors.MessagesPerMinute, o.Floors.ReconnectsPerHour, o.Floors.RejectedShare} {
		d.lim[i] = limits{factor: o.Factor, deviations: o.Deviations, floor: floor, warmup: warm}
	}
	d.found = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vitalgate_anomalies_total",
		Help: "Behaviour anomalies reported (one per episode), by metric."}, []string{"metric"})
	for _, m := range Metrics() {
		d.found.WithLabelValues(m)
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(d.found, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "vitalgate_anomaly_devices",
			Help: "Devices whose behaviour is tracked."}, func() float64 { return float64(d.Tracked()) }))
	}
	return d
}

func (o Options) withDefaults() Options {
	pick := func(v *float64, def float64) {
		if *v <= 0 {
			*v = def
		}
	}
	if o.Window <= 0 {
		o.Window = defaultWindow
	}
	if o.Warmup <= 0 {
		o.Warmup = defaultWarmup
	}
	pick(&o.Factor, 3)
	pick(&o.Deviations, 6)
	pick(&o.Floors.MessagesPerMinute, 10)
	pick(&o.Floors.ReconnectsPerHour, 60)
	pick(&o.Floors.RejectedShare, 0.1)
	if o.MaxDevices <= 0 {
		o.MaxDevices = 20000
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o
}

// Tracked is the number of devices tracked.
func (d *Detector) Tracked() int {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return len(d.devices)
}

// Connected counts a connection of dev; the first one the detector sees is
// not a reconnect.
func (d *Detector) Connected(dev string, _ *x509.Certificate, remote string) {
	d.mu.RLock()
	s := d.devices[dev]
	if s != nil {
		s.connects.Add(1)
		s.open.Add(1)
		s.remote.Store(&remote)
	}
	d.mu.RUnlock()
	if s != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if s = d.devices[dev]; s != nil { // another connection got here first
		s.connects.Add(1)
	} else if len(d.devices) >= d.o.MaxDevices {
		if !d.full.Swap(true) {
			d.o.Log.Warn("anomaly detection: device limit reached; further devices are not tracked", "max_devices", d.o.MaxDevices)
		}
		return
	} else {
		s = &device{}
		d.devices[dev] = s
	}
	s.open.Add(1)
	s.remote.Store(&remote)
}

// Disconnected notes that a connection of dev closed.
func (d *Detector) Disconnected(dev string, _ *x509.Certificate, _ string) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if s := d.devices[dev]; s != nil {
		s.open.Add(-1)
		s.dropped.Store(true)
	}
}

// Verdict counts one message of dev. Overload is the gateway's state, not
// the device's doing: it counts as a message, not as a rejection.
func (d *Detector) Verdict(dev string, v verdict.Verdict) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	s := d.devices[dev]
	if s == nil {
		return
	}
	s.msgs.Add(1)
	if v != "" && v != verdict.Overloaded {
		s.rejects.Add(1)
	}
}

// Run closes a window every Options.Window until ctx is done.
func (d *Detector) Run(ctx context.Context) {
	t := time.NewTicker(d.o.Window)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			d.Tick(now)
		}
	}
}

// figures of one device's closed window; judged is false for a figure the
// window cannot give (see the metric constants).
type figures struct {
	x      [3]float64
	judged [3]bool
}

// Tick closes the current window at now: it judges and learns each
// device's figures, emits the anomalies found, and forgets devices gone for
// a day.
func (d *Detector) Tick(now time.Time) {
	d.tickMu.Lock()
	defer d.tickMu.Unlock()
	var events []audit.Event
	var gone []string
	d.mu.RLock()
	for id, s := range d.devices {
		f, idle := s.close(d.o.Window)
		if idle && time.Duration(s.idle)*d.o.Window >= forgetAfter {
			gone = append(gone, id)
		}
		for m := range f.x {
			if !f.judged[m] {
				continue
			}
			if thr, base, start := s.base[m].observe(f.x[m], d.lim[m]); start {
				events = append(events, d.event(now, id, s.remote.Load(), m, f.x[m], base, thr))
			}
		}
	}
	d.mu.RUnlock()
	d.forget(gone)
	for _, e := range events {
		d.found.WithLabelValues(e.Metric).Inc()
		if d.o.Emit != nil {
			d.o.Emit(e)
		}
	}
}

// close takes the window's counters and returns its figures, and whether
// the device had no connection and no traffic in it.
func (s *device) close(window time.Duration) (f figures, idle bool) {
	msgs, rejects, connects := s.msgs.Swap(0), s.rejects.Swap(0), s.connects.Swap(0)
	dropped, open := s.dropped.Swap(false), s.open.Load() > 0
	full := s.wasOpen && open && !dropped
	s.wasOpen = open

	s.recent[s.pos] = uint16(min(connects, 1<<16-1))
	s.pos = (s.pos + 1) % reconnectSpan
	var recent float64
	for _, n := range s.recent {
		recent += float64(n)
	}
	f.x[0], f.judged[0] = float64(msgs)*float64(time.Minute)/float64(window), full
	f.x[1], f.judged[1] = recent*float64(time.Hour)/float64(reconnectSpan*window), true
	if msgs >= minMessages {
		f.x[2], f.judged[2] = float64(rejects)/float64(msgs), true
	}
	idle = !open && msgs == 0 && connects == 0
	if idle {
		s.idle++
	} else {
		s.idle = 0
	}
	return f, idle
}

// forget drops devices still without a connection.
func (d *Detector) forget(ids []string) {
	if len(ids) == 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, id := range ids {
		if s := d.devices[id]; s != nil && s.open.Load() <= 0 {
			delete(d.devices, id)
		}
	}
	d.full.Store(false)
}

// names of the metrics in an event's detail, and their precision.
var wording = [3]struct {
	name   string
	format string
}{
	{"messages per minute", "%.0f"},
	{"reconnects per hour", "%.0f"},
	{"share of rejected messages", "%.2f"},
}

// event is the security event of an anomaly of metric m.
func (d *Detector) event(now time.Time, id string, remote *string, m int, figure, base, threshold float64) audit.Event {
	w := wording[m]
	num := func(v float64) string { return fmt.Sprintf(w.format, v) }
	e := audit.Event{V: 1, TS: now.UnixMilli(), GW: d.o.GatewayID, Dev: id, Verdict: Verdict, Metric: Metrics()[m],
		Detail: fmt.Sprintf("%s %s above the threshold %s (the device's baseline %s); telemetry is not blocked",
			w.name, num(figure), num(threshold), num(base)),
		Figure: &figure, Threshold: &threshold}
	e.Baseline = &base
	if remote != nil {
		e.Remote = *remote
	}
	return e
}
