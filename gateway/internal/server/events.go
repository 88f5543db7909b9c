package server

import (
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
)

// eventGate bounds the security events one source can write to the audit
// log and the cloud, so a misbehaving device or an anonymous flood of failed
// handshakes cannot fill the disk or crowd out other devices' events. Every
// rejection is still counted in the metrics; what the gate holds back is
// summarised in the next event it lets through ("+N similar suppressed") and
// in vitalgate_gateway_events_suppressed_total.
type eventGate struct {
	perDevice, anonymous rate.Limit
	burstDev, burstAnon  int

	mu      sync.Mutex
	sources map[string]*source // "" is every source without a device ID
	swept   time.Time
}

type source struct {
	lim        *rate.Limiter
	suppressed int
	seen       time.Time
}

func newEventGate() *eventGate {
	return &eventGate{perDevice: 5, burstDev: 50, anonymous: 20, burstAnon: 100, sources: make(map[string]*source)}
}

// admit reports whether e may be written, adding to its detail the count of
// events of the same source suppressed before it. The start of a quarantine
// is always written: it is the event that matters most about a flooding
// device. The refusals of its reconnects that follow take the budget like
// any other event.
func (g *eventGate) admit(e *audit.Event, now time.Time, quarantine bool) bool {
	if quarantine {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.sources[e.Dev]
	if s == nil {
		r, b := g.perDevice, g.burstDev
		if e.Dev == "" {
			r, b = g.anonymous, g.burstAnon
		}
		s = &source{lim: rate.NewLimiter(r, b)}
		g.sources[e.Dev] = s
	}
	s.seen = now
	if now.Sub(g.swept) > 10*time.Minute {
		g.swept = now
		for k, v := range g.sources {
			if now.Sub(v.seen) > 10*time.Minute && v.suppressed == 0 {
				delete(g.sources, k)
			}
		}
	}
	if !s.lim.AllowN(now, 1) {
		s.suppressed++
		return false
	}
	if s.suppressed > 0 {
		e.Detail += fmt.Sprintf(" (+%d similar events suppressed)", s.suppressed)
		s.suppressed = 0
	}
	return true
}
