package posture

import (
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/gateway/internal/ingest"
)

// EventVerdict is the verdict of the security event of a new finding.
const EventVerdict = "audit"

// Options wires an [Auditor] to the running gateway.
type Options struct {
	PKI     string // the PKI directory
	Policy  Policy
	Tracker *Tracker // connects and traffic; nil: none
	// Connections lists the device connections open now; nil: none.
	Connections func() []ingest.Connection
	// Firmware is the firmware check (the device inventory's); nil: none.
	Firmware FirmwareCheck
	// Event receives the security event of each new finding.
	Event      func(audit.Event)
	GatewayID  string
	Registerer prometheus.Registerer // for vitalgate_audit_findings; nil: none
	Now        func() time.Time
}

// Auditor runs the whole audit, reports each finding once, when it appears
// (a finding that clears and comes back is reported again), and keeps the
// gauge of findings by check and severity. Its methods are safe for
// concurrent use; runs are serialised.
type Auditor struct {
	o     Options
	gauge *prometheus.GaugeVec

	mu     sync.Mutex      // held for a whole run: one at a time
	active map[string]bool // keys of the findings of the last run
	last   Report
}

// NewAuditor returns an auditor; its gauge is registered with
// o.Registerer, every check and severity at zero.
func NewAuditor(o Options) *Auditor {
	if o.Now == nil {
		o.Now = time.Now
	}
	o.Policy = o.Policy.withDefaults()
	a := &Auditor{o: o, active: map[string]bool{}, gauge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "vitalgate_audit_findings", Help: "Findings of the last posture audit, by check and severity."},
		[]string{"check", "severity"})}
	for _, c := range Checks {
		for _, s := range Severities {
			a.gauge.WithLabelValues(c, s).Set(0)
		}
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(a.gauge)
	}
	return a
}

// Run audits now: the PKI directory, the open connections, the tracked
// behaviour. It emits the events of new findings and sets the gauge.
func (a *Auditor) Run() Report {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.run()
}

// Fresh returns the last report if it is younger than maxAge, else runs
// the audit: a flood of requests costs at most one run per maxAge.
func (a *Auditor) Fresh(maxAge time.Duration) Report {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.last.Time.IsZero() && a.o.Now().Sub(a.last.Time) < maxAge {
		return a.last
	}
	return a.run()
}

// run is one audit; the caller holds a.mu.
func (a *Auditor) run() Report {
	now := a.o.Now()
	st, found := CheckPKI(a.o.PKI, now, a.o.Policy)
	if a.o.Connections != nil {
		found = append(found, connectionFindings(a.o.Connections(), st, now, a.o.Policy, a.o.Firmware)...)
	}
	rep := Report{Time: now.UTC()}
	if a.o.Tracker != nil {
		found = append(found, a.o.Tracker.findings(a.o.Policy)...)
		rep.Tracked, rep.Untracked = a.o.Tracker.Counts()
	}
	rep.Findings = append([]Finding{}, dedupe(found)...)
	sortFindings(rep.Findings)
	a.publish(rep, now)
	a.last = rep
	return rep
}

// publish emits the events of the findings that were not in the last run
// and sets the gauge. The caller holds a.mu.
func (a *Auditor) publish(rep Report, now time.Time) {
	active := make(map[string]bool, len(rep.Findings))
	count := map[[2]string]float64{}
	for _, f := range rep.Findings {
		active[f.key()] = true
		count[[2]string{f.Check, f.Severity}]++
		if a.active[f.key()] || a.o.Event == nil {
			continue
		}
		e := audit.Event{V: 1, TS: now.UnixMilli(), GW: a.o.GatewayID, Verdict: EventVerdict,
			Severity: f.Severity, Detail: f.Check + ": " + f.Detail}
		if f.dev {
			e.Dev = f.Subject
		} else {
			e.Detail = f.Check + " " + f.Subject + ": " + f.Detail
		}
		a.o.Event(e)
	}
	a.active = active
	for _, c := range Checks {
		for _, s := range Severities {
			a.gauge.WithLabelValues(c, s).Set(count[[2]string{c, s}])
		}
	}
}

// connectionFindings checks the open connections: a certificate that a
// revocation list on disk lists, or that expires soon with no renewal on
// file, and firmware below the minimum.
func connectionFindings(conns []ingest.Connection, st *PKIState, now time.Time, p Policy, fw FirmwareCheck) []Finding {
	var out []Finding
	for _, c := range conns {
		if c.Cert == nil {
			continue
		}
		if list := st.revokedBy(c.Cert); list != "" {
			out = append(out, Finding{dev: true, Check: CheckRevoked, Severity: Critical, Subject: c.ID,
				Detail: fmt.Sprintf("connected from %s with certificate serial %s, which %s revokes: the gateway has not applied that list (see its log for \"reload revocation list\"); the session is closed when it does",
					c.Remote, c.Cert.SerialNumber.Text(16), list)})
		}
		if rest := c.Cert.NotAfter.Sub(now); rest < p.DeviceCertWarn && !st.newest[c.ID].After(c.Cert.NotAfter) {
			out = append(out, Finding{dev: true, Check: CheckDeviceCert, Severity: High, Subject: c.ID,
				Detail: fmt.Sprintf("connected from %s with a certificate that has %s and no renewal on file", c.Remote, left(c.Cert.NotAfter, now))})
		}
		if fw == nil {
			continue
		}
		if v, minimum, below, ok := fw(c.ID); ok && below {
			out = append(out, Finding{dev: true, Check: CheckFirmwareMin, Severity: High, Subject: c.ID,
				Detail: fmt.Sprintf("firmware %s is below the site's minimum %s", v, minimum)})
		}
	}
	return out
}

// dedupe drops repeated findings (the same check, subject and severity
// found twice, by a file and by a connection say), keeping the first.
func dedupe(fs []Finding) []Finding {
	seen := map[string]bool{}
	out := fs[:0]
	for _, f := range fs {
		if !seen[f.key()] {
			seen[f.key()] = true
			out = append(out, f)
		}
	}
	return out
}
