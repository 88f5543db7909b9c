package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/gateway/internal/ingest"
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

// event records a security event, if the source's event budget allows:
// audit log first (the durable record), then the cloud, then the log.
func (g *Gateway) event(e audit.Event, quarantine bool) {
	if !g.events.admit(&e, time.Now(), quarantine) {
		g.suppressed.Inc()
		return
	}
	if err := g.audit.Append(e); err != nil {
		g.log.Error("audit log append", "error", err)
	}
	if b, err := json.Marshal(e); err == nil {
		g.relay.PublishEvent(b)
	}
	g.log.Warn("security event", "verdict", e.Verdict, "dev", e.Dev, "detail", e.Detail, "remote", e.Remote)
}

func (g *Gateway) handshakeOutcome(m *ingest.Metrics) func(string, *tls.ConnectionState, error) {
	return func(remote string, st *tls.ConnectionState, err error) {
		if err == nil {
			m.Handshakes.WithLabelValues("ok").Inc()
			return
		}
		m.Handshakes.WithLabelValues("failed").Inc()
		if isNoise(err) {
			return // a port scan or a dropped TCP connection is not a security event
		}
		g.event(audit.Event{V: 1, TS: time.Now().UnixMilli(), GW: g.id, Verdict: "handshake_failed",
			Detail: err.Error(), Remote: remote}, false)
	}
}

func isNoise(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, net.ErrClosed) || (errors.As(err, &ne) && ne.Timeout()) || err.Error() == "EOF"
}
