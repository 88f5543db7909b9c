package server

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/internal/fulldisk"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

type readiness struct {
	Status  int
	Ready   bool     `json:"ready"`
	Reasons []string `json:"reasons"`
}

// readyz reads the gateway's /readyz.
func (e *env) readyz() readiness {
	e.t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + e.gw.HTTPAddr() + "/readyz")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	r := readiness{Status: resp.StatusCode}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		e.t.Fatalf("/readyz body: %v", err)
	}
	return r
}

// hasReason reports whether one of r's reasons starts with prefix and
// contains sub.
func (r readiness) hasReason(prefix, sub string) bool {
	for _, s := range r.Reasons {
		if strings.HasPrefix(s, prefix) && strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// A full disk makes the gateway unready, with the reasons (the queue cannot
// store, the audit log cannot write), and counts the audit log's failures;
// once space is freed the next message is stored, the audit log writes
// again with a gap record for what it lost, and the gateway is ready.
// Before, /readyz said ready while every PUBLISH got 0x97, and the audit
// log stayed failed until a restart.
func TestFullDiskReadiness(t *testing.T) {
	data := fulldisk.Mount(t, "8m")
	e := newEnv(t, func(c *config.Config) { c.Data = data })
	if r := e.readyz(); r.Status != http.StatusOK || !r.Ready || len(r.Reasons) != 0 {
		t.Fatalf("/readyz at start: %+v", r)
	}
	e.device("full-1")
	c := e.mustDial5("full-1")
	topic := telemetryTopic("full-1")
	if code := publish5(t, c, topic, e.sign("full-1", spo2("full-1", 1))); code != 0 {
		t.Fatalf("first publish: 0x%02x", code)
	}

	filler := fulldisk.Fill(t, data)
	// The queue may still have room in pages it allocated before; a few
	// messages use them up.
	var code byte
	for seq := uint64(2); seq < 200 && code == 0; seq++ {
		code = publish5(t, c, topic, e.sign("full-1", spo2("full-1", seq)))
	}
	if code != packets.ErrQuotaExceeded.Code {
		t.Fatalf("publish on a full disk: 0x%02x, want 0x97", code)
	}
	var r readiness
	testutil.Eventually(t, 10*time.Second, "/readyz to name the queue and the audit log", func() bool {
		r = e.readyz()
		return r.hasReason("queue: ", "no space left on device") && r.hasReason("audit: ", "no space left on device")
	})
	if r.Status != http.StatusServiceUnavailable || r.Ready {
		t.Fatalf("/readyz on a full disk: %+v", r)
	}
	if e.metric("vitalgate_audit_failing", "") != 1 || e.metric("vitalgate_audit_write_errors_total", "") < 1 ||
		e.metric("vitalgate_queue_failing", "") != 1 {
		t.Fatal("audit or queue failure not in the metrics")
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	var seq uint64 = 1000
	testutil.Eventually(t, 10*time.Second, "a message stored once space is freed", func() bool {
		seq++
		return publish5(t, c, topic, e.sign("full-1", spo2("full-1", seq))) == 0
	})
	testutil.Eventually(t, 10*time.Second, "/readyz ready again", func() bool {
		r = e.readyz()
		return r.Status == http.StatusOK && r.Ready && len(r.Reasons) == 0
	})
	if e.metric("vitalgate_audit_failing", "") != 0 || e.metric("vitalgate_queue_failing", "") != 0 {
		t.Fatal("failure gauges still set after recovery")
	}
	if err := e.gw.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Check(filepath.Join(data, AuditFile))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Gaps) == 0 || !strings.Contains(rep.Gaps[0].Detail, "no space left on device") {
		t.Fatalf("audit log after recovery: %+v, want a gap record", rep)
	}
}

// A queue that fails (closed here, as on a disk error) makes /readyz
// unready with the reason, without root.
func TestQueueFailureNotReady(t *testing.T) {
	e := newEnv(t, nil)
	e.device("qf-1")
	c := e.mustDial5("qf-1")
	if err := e.gw.Queue().Close(); err != nil {
		t.Fatal(err)
	}
	if code := publish5(t, c, telemetryTopic("qf-1"), e.sign("qf-1", spo2("qf-1", 1))); code != packets.ErrQuotaExceeded.Code {
		t.Fatalf("publish with the queue failing: 0x%02x, want 0x97", code)
	}
	r := e.readyz()
	if r.Status != http.StatusServiceUnavailable || r.Ready || !r.hasReason("queue: ", "queue closed (failing since ") {
		t.Fatalf("/readyz with the queue failing: %+v", r)
	}
}
