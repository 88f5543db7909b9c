package posture

import (
	"crypto/x509"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vitalgate/vitalgate/internal/verdict"
)

// Bounds of the per-device state: a few fixed-size rings.
const (
	maxTakeovers = 32 // takeovers remembered per device (the storm threshold's cap)
	connectRing  = 8  // recent connects remembered per device
	gapRing      = 16 // recent gaps between accepted messages
	minGaps      = 5  // gaps needed before a device's interval is trusted
	// DefaultMaxDevices is the default cap on the devices a [Tracker] follows.
	DefaultMaxDevices = 50000
)

// Tracker follows each device's connections and accepted messages, as an
// observer of the ingest hook (its methods are the hook's Observer), with
// fixed memory per device and a cap on the devices it follows. Its methods
// take one short lock and never block on anything else.
type Tracker struct {
	now func() time.Time
	max int

	mu        sync.Mutex
	devices   map[string]*devState
	untracked map[string]struct{} // up to max of the devices beyond the cap, to count them
}

// devState is what the tracker keeps of one device.
type devState struct {
	open      int                    // connections open now
	connects  [connectRing]connect   // ring of recent connects
	nConn     int                    // connects seen
	takeovers [maxTakeovers]int64    // ring of takeover times (Unix ns)
	nTake     int                    // takeovers seen
	last      int64                  // last accepted message (Unix ns), 0: none
	gaps      [gapRing]time.Duration // ring of gaps between accepted messages
	nGaps     int                    // gaps seen
}

// connect is one admitted connection: when, from which host, with which
// certificate (serial, hex).
type connect struct {
	at     int64
	host   string
	serial string
}

// NewTracker returns a tracker of at most maxDevices devices (0: the
// default); now is its clock (nil: time.Now).
func NewTracker(maxDevices int, now func() time.Time) *Tracker {
	if maxDevices <= 0 {
		maxDevices = DefaultMaxDevices
	}
	if now == nil {
		now = time.Now
	}
	return &Tracker{now: now, max: maxDevices, devices: map[string]*devState{}, untracked: map[string]struct{}{}}
}

// state returns dev's state, creating it within the cap; nil beyond it.
// The caller holds t.mu.
func (t *Tracker) state(dev string) *devState {
	if s := t.devices[dev]; s != nil {
		return s
	}
	if len(t.devices) >= t.max {
		if len(t.untracked) < t.max {
			t.untracked[dev] = struct{}{}
		}
		return nil
	}
	s := &devState{}
	t.devices[dev] = s
	return s
}

// Connected records an admitted connection. One already open for the
// device means the new one takes it over.
func (t *Tracker) Connected(dev string, cert *x509.Certificate, remote string) {
	now := t.now().UnixNano()
	host := hostOf(remote)
	serial := ""
	if cert != nil && cert.SerialNumber != nil {
		serial = cert.SerialNumber.Text(16)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.state(dev)
	if s == nil {
		return
	}
	if s.open > 0 {
		s.takeovers[s.nTake%maxTakeovers] = now
		s.nTake++
	}
	s.open++
	s.connects[s.nConn%connectRing] = connect{at: now, host: host, serial: serial}
	s.nConn++
}

// Disconnected records a closed connection.
func (t *Tracker) Disconnected(dev string, cert *x509.Certificate, remote string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.devices[dev]; s != nil && s.open > 0 {
		s.open--
	}
}

// Verdict records the time of each accepted message and the gap since the
// previous one.
func (t *Tracker) Verdict(dev string, v verdict.Verdict) {
	if v != "" {
		return
	}
	now := t.now().UnixNano()
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.state(dev)
	if s == nil {
		return
	}
	if s.last != 0 && now > s.last {
		s.gaps[s.nGaps%gapRing] = time.Duration(now - s.last)
		s.nGaps++
	}
	s.last = now
}

// Counts returns how many devices are tracked, and how many were seen
// beyond the cap (counted up to the cap).
func (t *Tracker) Counts() (tracked, untracked int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.devices), len(t.untracked)
}

// findings runs the checks of tracked behaviour: clones and takeover storms
// within the window, and silent devices.
func (t *Tracker) findings(p Policy) []Finding {
	now := t.now()
	since := now.Add(-p.Window).UnixNano()
	var out []Finding
	t.mu.Lock()
	defer t.mu.Unlock()
	for dev, s := range t.devices {
		if f, ok := s.cloned(dev, since, p); ok {
			out = append(out, f)
		}
		if n := s.takeoversSince(since); n >= p.Takeovers {
			out = append(out, Finding{dev: true, Check: CheckStorm, Severity: High, Subject: dev,
				Detail: fmt.Sprintf("%d takeovers of client ID %s within %s (threshold %d): two clients fight over one identity, or one reconnects without closing",
					n, dev, p.Window, p.Takeovers)})
		}
		if f, ok := s.silence(dev, now, p); ok {
			out = append(out, f)
		}
	}
	return out
}

// cloned reports one certificate connecting from two hosts in turn within
// the window: from A, from B, and from A again (or on to a third host). A
// single move (a home network's new address) is one switch and no finding;
// a copied key fights the original, and every takeover switches hosts.
func (s *devState) cloned(dev string, since int64, p Policy) (Finding, bool) {
	recent := make([]connect, 0, connectRing)
	for i := range min(s.nConn, connectRing) {
		if c := s.connects[i]; c.at >= since {
			recent = append(recent, c)
		}
	}
	sort.Slice(recent, func(i, j int) bool { return recent[i].at < recent[j].at })
	last := map[string]string{} // serial → host of its previous connect
	switches := map[string]int{}
	hosts := map[string][]string{}
	for _, c := range recent {
		if h, ok := last[c.serial]; ok && h != c.host {
			switches[c.serial]++
		}
		last[c.serial] = c.host
		if !slices.Contains(hosts[c.serial], c.host) {
			hosts[c.serial] = append(hosts[c.serial], c.host)
		}
	}
	for serial, n := range switches {
		if n >= 2 {
			return Finding{dev: true, Check: CheckCloned, Severity: Critical, Subject: dev,
				Detail: fmt.Sprintf("certificate serial %s connected from %s in turn (%d switches within %s): its key is probably copied; revoke the certificate and enrol the real device again",
					serial, strings.Join(hosts[serial], " and "), n, p.Window)}, true
		}
	}
	return Finding{}, false
}

// takeoversSince counts the takeovers at or after since.
func (s *devState) takeoversSince(since int64) int {
	n := 0
	for i := range min(s.nTake, maxTakeovers) {
		if s.takeovers[i] >= since {
			n++
		}
	}
	return n
}

// silence reports a device quiet for longer than its expected interval:
// the policy's factor times its median gap, and at least the minimum. A
// device needs minGaps gaps before its interval is trusted.
func (s *devState) silence(dev string, now time.Time, p Policy) (Finding, bool) {
	if s.nGaps < minGaps || s.last == 0 {
		return Finding{}, false
	}
	gaps := slices.Clone(s.gaps[:min(s.nGaps, gapRing)])
	sort.Slice(gaps, func(i, j int) bool { return gaps[i] < gaps[j] })
	median := gaps[len(gaps)/2]
	expected := max(time.Duration(float64(median)*p.SilenceFactor), p.SilenceMin)
	quiet := now.Sub(time.Unix(0, s.last))
	if quiet <= expected {
		return Finding{}, false
	}
	state := "disconnected"
	if s.open > 0 {
		state = "connected"
	}
	return Finding{dev: true, Check: CheckSilent, Severity: Medium, Subject: dev,
		Detail: fmt.Sprintf("no accepted message for %s (%s), expected within %s (%.0fx its median gap of %s, at least %s)",
			quiet.Round(time.Second), state, expected.Round(time.Second), p.SilenceFactor, median.Round(time.Millisecond), p.SilenceMin)}, true
}

// hostOf is the host of a host:port address (the address itself if it has
// no port).
func hostOf(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}
