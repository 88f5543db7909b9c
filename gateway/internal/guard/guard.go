// Package guard holds the per-device state that outlives a connection: the
// message and byte rate limits (golang.org/x/time/rate) and the violation
// counter that quarantines a device after repeated rejections.
//
// A device reconnecting does not get a fresh budget: limits and violations are
// kept per device ID, not per connection. Memory is bounded because only
// authenticated device IDs (a certificate from the device CA) get an entry, and
// idle entries are pruned.
package guard

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limits configures the guard. Zero values take the defaults of [Default].
type Limits struct {
	// MessagesPerSecond and MessageBurst bound how often one device may publish.
	MessagesPerSecond float64
	MessageBurst      int
	// BytesPerSecond and ByteBurst bound the payload bytes one device may publish.
	BytesPerSecond float64
	ByteBurst      int
	// Violations within Window quarantine a device for Cooloff.
	Violations int
	Window     time.Duration
	Cooloff    time.Duration
}

// Default returns limits that suit home-care devices: a reading every few
// seconds at most, with room for an offline backlog of 1-second ECG chunks.
func Default() Limits {
	return Limits{
		MessagesPerSecond: 20, MessageBurst: 200,
		BytesPerSecond: 256 << 10, ByteBurst: 4 << 20,
		Violations: 20, Window: time.Minute, Cooloff: 10 * time.Minute,
	}
}

// Guard tracks every device's rate budget and violations.
type Guard struct {
	lim Limits
	now func() time.Time

	mu      sync.Mutex
	devices map[string]*device
	sweep   time.Time
}

type device struct {
	msgs, bytes *rate.Limiter
	strikes     []time.Time // violation times inside the window, oldest first
	until       time.Time   // quarantined until
	seen        time.Time
}

// New returns a guard with the given limits (zero fields take defaults).
func New(l Limits) *Guard {
	d := Default()
	if l.MessagesPerSecond <= 0 {
		l.MessagesPerSecond = d.MessagesPerSecond
	}
	if l.MessageBurst <= 0 {
		l.MessageBurst = d.MessageBurst
	}
	if l.BytesPerSecond <= 0 {
		l.BytesPerSecond = d.BytesPerSecond
	}
	if l.ByteBurst <= 0 {
		l.ByteBurst = d.ByteBurst
	}
	if l.Violations <= 0 {
		l.Violations = d.Violations
	}
	if l.Window <= 0 {
		l.Window = d.Window
	}
	if l.Cooloff <= 0 {
		l.Cooloff = d.Cooloff
	}
	return &Guard{lim: l, now: time.Now, devices: make(map[string]*device)}
}

func (g *Guard) get(id string, now time.Time) *device {
	d := g.devices[id]
	if d == nil {
		d = &device{
			msgs:  rate.NewLimiter(rate.Limit(g.lim.MessagesPerSecond), g.lim.MessageBurst),
			bytes: rate.NewLimiter(rate.Limit(g.lim.BytesPerSecond), g.lim.ByteBurst),
		}
		g.devices[id] = d
	}
	d.seen = now
	if now.Sub(g.sweep) > g.lim.Window+g.lim.Cooloff {
		g.prune(now)
	}
	return d
}

// prune forgets devices idle long enough that their limiters are full and
// their strikes and quarantine have expired.
func (g *Guard) prune(now time.Time) {
	g.sweep = now
	idle := g.lim.Window + g.lim.Cooloff
	if refill := time.Duration(float64(g.lim.MessageBurst)/g.lim.MessagesPerSecond*float64(time.Second)) + time.Second; refill > idle {
		idle = refill
	}
	for id, d := range g.devices {
		if now.Sub(d.seen) > idle && now.After(d.until) {
			delete(g.devices, id)
		}
	}
}

// Allow spends one message and n bytes of the device's budget. It reports
// false, spending nothing, when either budget is exhausted.
func (g *Guard) Allow(id string, n int) bool {
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	d := g.get(id, now)
	if n > g.lim.ByteBurst {
		return false
	}
	m := d.msgs.ReserveN(now, 1)
	if !m.OK() || m.DelayFrom(now) > 0 {
		m.CancelAt(now)
		return false
	}
	b := d.bytes.ReserveN(now, n)
	if !b.OK() || b.DelayFrom(now) > 0 {
		b.CancelAt(now)
		m.CancelAt(now)
		return false
	}
	return true
}

// Strike records a violation. It returns the end of a quarantine when this
// strike starts one, and the zero time otherwise.
func (g *Guard) Strike(id string) time.Time {
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	d := g.get(id, now)
	if now.Before(d.until) {
		return time.Time{}
	}
	cut := now.Add(-g.lim.Window)
	i := 0
	for i < len(d.strikes) && !d.strikes[i].After(cut) {
		i++
	}
	d.strikes = append(d.strikes[i:], now)
	if len(d.strikes) >= g.lim.Violations {
		d.strikes = d.strikes[:0]
		d.until = now.Add(g.lim.Cooloff)
		return d.until
	}
	return time.Time{}
}

// Quarantined reports whether the device is quarantined, and until when.
func (g *Guard) Quarantined(id string) (time.Time, bool) {
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	d := g.devices[id]
	if d == nil || !now.Before(d.until) {
		return time.Time{}, false
	}
	return d.until, true
}

// Release lifts a device's quarantine (an operator's decision).
func (g *Guard) Release(id string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if d := g.devices[id]; d != nil {
		d.until = time.Time{}
		d.strikes = d.strikes[:0]
	}
}

// Len is the number of devices tracked.
func (g *Guard) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.devices)
}
