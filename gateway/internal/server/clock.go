package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/gateway/internal/clocktrust"
)

// The security events of the clock's trust (package clocktrust).
const (
	// EventClockUntrusted: the clock cannot judge records' time (behind
	// its floor, far past it, or not synchronised when that is required);
	// records are stored unjudged and marked clock_untrusted.
	EventClockUntrusted = "clock_untrusted"
	// EventClockTrusted: the clock is trusted again; records' time is
	// judged again.
	EventClockTrusted = "clock_trusted"
)

// clockInterval is how often the running gateway checks its clock.
const clockInterval = 10 * time.Second

// tuneClock, when set (by tests in this package only), adjusts the clock's
// options (an injected clock and kernel state) before it is built; the
// ingest hook then reads the same injected clock.
var tuneClock func(*clocktrust.Options)

// newClock judges the clock (its floor from the PKI's certificates and
// DATA/clock-floor), registers its gauge and reports an untrusted clock at
// start as a security event.
func (g *Gateway) newClock() (err error) {
	o := clocktrust.Options{PKI: g.cfg.PKI, Data: g.cfg.Data, RequireSync: g.cfg.Clock.RequireSync,
		MaxAhead: g.cfg.Clock.MaxAhead, Now: time.Now, OnChange: g.clockChanged, Log: g.log.With("component", "clock")}
	if tuneClock != nil {
		tuneClock(&o)
	}
	g.now = o.Now
	if g.clock, err = clocktrust.New(o); err != nil {
		return err
	}
	g.deviceTLSClock(o.Now)
	g.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "vitalgate_clock_trusted",
		Help: "1 while the gateway's clock is trusted to judge records' time; 0 while records are stored unjudged and marked clock_untrusted."},
		func() float64 {
			if g.clock.Trusted() {
				return 1
			}
			return 0
		}))
	return nil
}

// clockChanged records a change of the clock's trust as a security event:
// audit log, cloud and log. It is never held back by an event budget.
func (g *Gateway) clockChanged(st clocktrust.State) {
	v := EventClockTrusted
	detail := fmt.Sprintf("clock %s trusted (floor %s, synchronised: %v): records' time is judged again",
		st.Now.UTC().Format(time.RFC3339), st.Floor.UTC().Format(time.RFC3339), st.Synced)
	if !st.Trusted {
		v = EventClockUntrusted
		detail = st.Reason + ": records are stored without judging their time and marked clock_untrusted"
	}
	g.event(audit.Event{V: 1, TS: st.Now.UnixMilli(), GW: g.id, Verdict: v, Detail: detail}, true)
}

// clockState is what /healthz and /readyz say of the clock.
func (g *Gateway) clockState() map[string]any {
	st := g.clock.State()
	m := map[string]any{"trusted": st.Trusted, "synchronised": st.Synced, "floor": st.Floor.UTC().Format(time.RFC3339)}
	if !st.Trusted {
		m["reason"] = st.Reason
	}
	return m
}

// deviceTLSClock makes the device listener's certificate checks follow the
// clock's trust. While the clock is trusted, a handshake checks the client's
// chain at the clock's time (o.Now), as usual. While it is untrusted, a clock
// in 1970 would find every certificate not yet valid, and one years ahead
// every certificate expired, so no device could connect and the records the
// gateway stores unjudged would never arrive: the chain is then checked at
// the latest of the floor (a time known to have passed) and the leaf's
// notBefore. A certificate that expired before the floor is still refused;
// one that expired since cannot be told apart without a trusted clock.
// Signature, chain, key usage and revocation are checked as always.
func (g *Gateway) deviceTLSClock(now func() time.Time) {
	base := g.files.deviceTLS
	base.Time = now
	untrusted := base.Clone()
	untrusted.ClientAuth = tls.RequireAnyClientCert
	untrusted.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
		return verifyClientAt(raw, base.ClientCAs, g.clock.State().Floor)
	}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		if g.clock.Trusted() {
			return nil, nil // the base configuration
		}
		return untrusted, nil
	}
}

// verifyClientAt verifies a client's chain (raw, leaf first) against roots
// for client authentication at the latest of floor and the leaf's notBefore.
func verifyClientAt(raw [][]byte, roots *x509.CertPool, floor time.Time) error {
	if len(raw) == 0 {
		return errors.New("no client certificate")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return fmt.Errorf("client certificate %d: %w", i, err)
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	at := floor
	if certs[0].NotBefore.After(at) {
		at = certs[0].NotBefore
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}
