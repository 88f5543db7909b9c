// Package posture is the gateway's posture audit: checks, in the manner of
// an IoT device defender, of what should worry an operator before it turns
// into an outage or an intrusion. Each check yields [Finding]s, each with a
// severity:
//
//	device_cert_expiring  a device certificate expires within 7 days with no renewal on file
//	ca_cert_expiring      a CA certificate (or the gateway's own) nears its end
//	crl_stale             a revocation list past or near its nextUpdate, or unreadable
//	key_policy            a device key other than P-256/Ed25519, or a weak CA key
//	revoked_connected     a connection whose certificate a revocation list on disk lists
//	cloned_device         one certificate connected from two addresses within a window
//	takeover_storm        many takeovers of one client ID within a window
//	device_silent         a device quiet for longer than its learned interval allows
//	firmware_minimum      a connected device reports firmware below its model's minimum
//
// [CheckPKI] runs the checks on the PKI directory (the stopped gateway's
// `gateway audit` runs only these); a [Tracker], fed by the ingest hook as
// an observer, adds the checks of live connections and traffic; an
// [Auditor] runs both, reports each new finding once as a security event and
// keeps the gauge of findings.
package posture

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Severities of a finding, lowest first.
const (
	Low      = "low"
	Medium   = "medium"
	High     = "high"
	Critical = "critical"
)

// Severities lists the severities, lowest first.
var Severities = []string{Low, Medium, High, Critical}

// Names of the checks.
const (
	CheckDeviceCert  = "device_cert_expiring"
	CheckCACert      = "ca_cert_expiring"
	CheckCRL         = "crl_stale"
	CheckKeyPolicy   = "key_policy"
	CheckRevoked     = "revoked_connected"
	CheckCloned      = "cloned_device"
	CheckStorm       = "takeover_storm"
	CheckSilent      = "device_silent"
	CheckFirmwareMin = "firmware_minimum"
)

// Checks lists every check, in the order findings are reported.
var Checks = []string{CheckRevoked, CheckCloned, CheckStorm, CheckDeviceCert, CheckCACert, CheckCRL,
	CheckKeyPolicy, CheckSilent, CheckFirmwareMin}

// Finding is one problem a check found: which check, how bad, about what
// (a device ID or a file of the PKI directory) and in words.
type Finding struct {
	Check    string `json:"check"`
	Severity string `json:"severity"`
	Subject  string `json:"subject"`
	Detail   string `json:"detail"`

	dev bool // Subject is a device ID (else a file of the PKI directory)
}

// key identifies a finding across runs: the same check on the same subject
// at the same severity is the same finding.
func (f Finding) key() string { return f.Check + "\x00" + f.Subject + "\x00" + f.Severity }

// Serious reports whether the finding is high or critical.
func (f Finding) Serious() bool { return f.Severity == High || f.Severity == Critical }

// Policy holds the thresholds of the checks. The zero value of a field
// takes its default ([DefaultPolicy]).
type Policy struct {
	DeviceCertWarn time.Duration // device certificates: 7 days
	CAWarn         time.Duration // CA certificates: 90 days, or a third of the lifetime if less
	CRLWarn        time.Duration // revocation lists: 7 days, or a quarter of the period if less
	SilenceFactor  float64       // a device is silent after this many times its median gap (3)...
	SilenceMin     time.Duration // ...and at least this long (5m)
	Window         time.Duration // connects and takeovers are judged over this window (10m)
	Takeovers      int           // takeovers of one client ID within Window that make a storm (10)
}

// DefaultPolicy is the policy of an unconfigured gateway.
func DefaultPolicy() Policy {
	return Policy{DeviceCertWarn: 7 * 24 * time.Hour, CAWarn: 90 * 24 * time.Hour, CRLWarn: 7 * 24 * time.Hour,
		SilenceFactor: 3, SilenceMin: 5 * time.Minute, Window: 10 * time.Minute, Takeovers: 10}
}

// withDefaults fills the zero fields of p from [DefaultPolicy].
func (p Policy) withDefaults() Policy {
	d := DefaultPolicy()
	if p.DeviceCertWarn <= 0 {
		p.DeviceCertWarn = d.DeviceCertWarn
	}
	if p.CAWarn <= 0 {
		p.CAWarn = d.CAWarn
	}
	if p.CRLWarn <= 0 {
		p.CRLWarn = d.CRLWarn
	}
	if p.SilenceFactor <= 0 {
		p.SilenceFactor = d.SilenceFactor
	}
	if p.SilenceMin <= 0 {
		p.SilenceMin = d.SilenceMin
	}
	if p.Window <= 0 {
		p.Window = d.Window
	}
	if p.Takeovers <= 0 {
		p.Takeovers = d.Takeovers
	}
	p.Takeovers = min(p.Takeovers, maxTakeovers)
	return p
}

// Report is the result of one audit.
type Report struct {
	Time     time.Time `json:"time"`
	Findings []Finding `json:"findings"`
	// Tracked is the number of devices whose connections and traffic are
	// tracked; Untracked counts devices seen beyond the tracker's cap.
	Tracked   int `json:"tracked_devices"`
	Untracked int `json:"untracked_devices"`
}

// Serious counts the findings at high or critical severity.
func (r Report) Serious() int {
	n := 0
	for _, f := range r.Findings {
		if f.Serious() {
			n++
		}
	}
	return n
}

// sortFindings orders findings by check (as [Checks] lists them), then by
// severity (worst first), then by subject.
func sortFindings(fs []Finding) {
	slices.SortStableFunc(fs, func(a, b Finding) int {
		if c := slices.Index(Checks, a.Check) - slices.Index(Checks, b.Check); c != 0 {
			return c
		}
		if c := slices.Index(Severities, b.Severity) - slices.Index(Severities, a.Severity); c != 0 {
			return c
		}
		return strings.Compare(a.Subject, b.Subject)
	})
}

// FirmwareCheck is the firmware check: given a device ID, it returns the
// device's reported firmware version and the site's minimum, ok false when
// either is unknown. The gateway's device inventory provides it; an
// [Auditor] with a FirmwareCheck reports connected devices below the
// minimum as firmware_minimum findings.
type FirmwareCheck func(dev string) (version, minimum string, below, ok bool)

// left says how long until t, in days (or hours under two days), for details.
func left(t, now time.Time) string {
	d := t.Sub(now)
	switch {
	case d <= 0:
		return "expired " + t.UTC().Format(time.RFC3339)
	case d < 48*time.Hour:
		return fmt.Sprintf("%.0f hours left (until %s)", d.Hours(), t.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("%.0f days left (until %s)", d.Hours()/24, t.UTC().Format(time.RFC3339))
}
