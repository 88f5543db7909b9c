package server

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/gateway/internal/posture"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// getAudit fetches GET /audit from the running gateway.
func (e *env) getAudit() posture.Report {
	e.t.Helper()
	resp, err := http.Get("http://" + e.gw.HTTPAddr() + "/audit")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var rep posture.Report
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		e.t.Fatalf("GET /audit: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		e.t.Fatal(err)
	}
	return rep
}

// finding returns the finding of check about subject, if any.
func finding(rep posture.Report, check, subject string) (posture.Finding, bool) {
	for _, f := range rep.Findings {
		if f.Check == check && f.Subject == subject {
			return f, true
		}
	}
	return posture.Finding{}, false
}

// auditEvents counts the security events of verdict v about dev in the
// audit log.
func (e *env) auditEvents(v, dev string) int {
	e.t.Helper()
	if err := e.gw.audit.Sync(); err != nil {
		e.t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(e.cfg.Data, AuditFile))
	if err != nil {
		e.t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, `"verdict":"`+v+`"`) && strings.Contains(l, `"dev":"`+dev+`"`) {
			n++
		}
	}
	return n
}

// findingsGauge reads vitalgate_audit_findings{check,severity}.
func (e *env) findingsGauge(check, severity string) float64 {
	e.t.Helper()
	mfs, err := e.gw.Registry().Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "vitalgate_audit_findings" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if l["check"] == check && l["severity"] == severity {
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

// The running gateway's audit finds, on real connections: one device
// certificate connected from 127.0.0.1 and 127.0.0.2 in turn (each
// connection taking the other over: a clone, and with a threshold of two
// takeovers a storm), a connected certificate expiring in 3 days, and a
// device that stopped publishing. Each finding is one `audit` event however
// often the audit runs, and counted in the gauge.
func TestPostureAuditLive(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Audit = config.AuditConfig{Interval: time.Hour, SilenceFactor: 3, SilenceMin: time.Second,
			Window: time.Minute, Takeovers: 2, MaxDevices: 100}
	})
	e.device("twin")
	e.device("quiet")
	if err := pki.IssueDevice(e.pki, "soon", pki.P256, 3); err != nil {
		t.Fatal(err)
	}
	if rep := e.getAudit(); len(rep.Findings) != 1 || rep.Findings[0].Check != posture.CheckDeviceCert {
		t.Fatalf("nothing connected yet: want only the file of soon, got %+v", rep.Findings)
	}
	for _, ip := range []string{"127.0.0.1", "127.0.0.2", "127.0.0.1"} {
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		if _, _, err := e.dialWith(d, e.gw.DeviceAddr(), "twin"); err != nil {
			t.Fatalf("twin from %s: %v", ip, err)
		}
	}
	e.mustDial5("soon")
	q := e.mustDial5("quiet")
	for seq := uint64(1); seq <= 7; seq++ {
		if rc := publish5(t, q, telemetryTopic("quiet"), e.sign("quiet", spo2("quiet", seq))); rc != 0 {
			t.Fatalf("quiet seq %d: reason 0x%02x", seq, rc)
		}
		time.Sleep(50 * time.Millisecond) // the device's rhythm: its gaps are what the audit learns
	}
	// GET /audit answers a report up to a second old: poll it.
	var rep posture.Report
	testutil.Eventually(t, 5*time.Second, "a report after the connections", func() bool {
		rep = e.getAudit()
		_, ok := finding(rep, posture.CheckCloned, "twin")
		return ok
	})
	if f, ok := finding(rep, posture.CheckCloned, "twin"); !ok || f.Severity != posture.Critical ||
		!strings.Contains(f.Detail, "127.0.0.1 and 127.0.0.2") {
		t.Errorf("clone: %+v in %+v", f, rep.Findings)
	}
	if f, ok := finding(rep, posture.CheckStorm, "twin"); !ok || !strings.Contains(f.Detail, "2 takeovers") {
		t.Errorf("takeover storm: %+v", f)
	}
	if f, ok := finding(rep, posture.CheckDeviceCert, "soon"); !ok || f.Severity != posture.High || !strings.Contains(f.Detail, "3 days left") {
		t.Errorf("certificate expiring in 3 days: %+v", f)
	}
	if _, ok := finding(rep, posture.CheckSilent, "quiet"); ok {
		t.Errorf("quiet reported silent while it publishes: %+v", rep.Findings)
	}
	testutil.Eventually(t, 10*time.Second, "quiet reported silent", func() bool {
		_, ok := finding(e.gw.auditor.Run(), posture.CheckSilent, "quiet")
		return ok
	})
	e.gw.auditor.Run()
	for _, dev := range []string{"twin", "soon", "quiet"} {
		want := map[string]int{"twin": 2, "soon": 1, "quiet": 1}[dev]
		if n := e.auditEvents("audit", dev); n != want {
			t.Errorf("%s: %d audit events after three runs, want %d (one per finding)", dev, n, want)
		}
	}
	if g := e.findingsGauge(posture.CheckCloned, posture.Critical); g != 1 {
		t.Errorf("vitalgate_audit_findings{cloned_device,critical} = %v", g)
	}
	if g := e.findingsGauge(posture.CheckSilent, posture.Medium); g != 1 {
		t.Errorf("vitalgate_audit_findings{device_silent,medium} = %v", g)
	}
	// Speaking again clears silence.
	if rc := publish5(t, q, telemetryTopic("quiet"), e.sign("quiet", spo2("quiet", 8))); rc != 0 {
		t.Fatalf("quiet seq 8: reason 0x%02x", rc)
	}
	if _, ok := finding(e.gw.auditor.Run(), posture.CheckSilent, "quiet"); ok {
		t.Error("quiet still silent after publishing")
	}
}

// A revoked certificate still connected: the revocation list on disk lists
// a device whose session the gateway has not closed, because the list in
// force is not that one yet (the second between the write and the watcher's
// reload, or a reload that failed). The test holds that moment still: the
// device connects to the real gateway, and the audit of its live
// connections reads a PKI directory where `certs revoke` has run and the
// gateway has not reloaded. On the gateway's own directory the reload closes
// the session and the audit has nothing to say.
func TestPostureRevokedConnected(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Audit.Interval = time.Hour })
	e.device("stolen")
	e.mustDial5("stolen")
	pending := t.TempDir()
	if out, err := exec.Command("cp", "-a", e.pki+"/.", pending).CombinedOutput(); err != nil {
		t.Fatalf("copy PKI: %v %s", err, out)
	}
	if err := pki.Revoke(pending, "stolen"); err != nil {
		t.Fatal(err)
	}
	a := posture.NewAuditor(posture.Options{PKI: pending, Connections: e.gw.hook.Connections})
	f, ok := finding(a.Run(), posture.CheckRevoked, "stolen")
	if !ok || f.Severity != posture.Critical || !strings.Contains(f.Detail, "crl.pem revokes") || !strings.Contains(f.Detail, "127.0.0.1:") {
		t.Fatalf("revoked and connected: %+v", f)
	}
	if err := pki.Revoke(e.pki, "stolen"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the revoked session closed", func() bool { return len(e.gw.hook.Connections()) == 0 })
	if f, ok := finding(e.getAudit(), posture.CheckRevoked, "stolen"); ok {
		t.Errorf("closed session still reported: %+v", f)
	}
}
