package server

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// TestRevocation: a revoked device is refused at the handshake, and one
// revoked while connected is disconnected when the gateway sees the new CRL.
func TestRevocation(t *testing.T) {
	e := newEnv(t, nil)
	e.device("temp-1")
	e.device("temp-2")
	e.device("temp-3")
	if err := pki.Revoke(e.pki, "temp-1"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the revoked device refused", func() bool {
		c, _, err := e.dial5("temp-1", "temp-1")
		if err == nil {
			c.Disconnect(&paho5.Disconnect{})
		}
		return err != nil
	})
	// No client certificate at all.
	tc := e.deviceTLS("temp-2")
	tc.Certificates = nil
	if conn, err := tls.Dial("tcp", e.gw.DeviceAddr(), tc); err == nil {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err == nil {
			t.Fatal("a client without a certificate was served")
		}
		conn.Close()
	}
	// A gateway certificate is not a device certificate.
	gc, err := pki.ClientTLS(filepath.Join(e.pki, pki.FileCA), filepath.Join(e.pki, pki.FileGatewayClient), filepath.Join(e.pki, pki.FileGatewayClientKey))
	if err != nil {
		t.Fatal(err)
	}
	gc.ServerName = "localhost"
	if conn, err := tls.Dial("tcp", e.gw.DeviceAddr(), gc); err == nil {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err == nil {
			t.Fatal("a gateway certificate was accepted as a device")
		}
		conn.Close()
	}

	// Revoked while connected: the live session is closed on the CRL reload.
	c := e.mustDial5("temp-3")
	done := make(chan struct{})
	go func() { <-c.Done(); close(done) }()
	if err := pki.Revoke(e.pki, "temp-3"); err != nil {
		t.Fatal(err)
	}
	if err := e.gw.Reload(); err != nil { // what SIGHUP does; the file watch would too
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("revoked device still connected after reload")
	}
	// Untouched device still connects.
	e.mustDial5("temp-2")
}

// TestRevocationBeforeStart: a CRL written after the gateway loaded it but
// before its file watch began (a loaded machine can delay the watcher's
// goroutine) is still picked up by the watch, with no SIGHUP.
func TestRevocationBeforeStart(t *testing.T) {
	e := &env{t: t, pki: newPKI(t)}
	e.cfg = testConfig(t, e.pki)
	e.device("temp-1")
	g, err := New(e.cfg, quietLog(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	// Revoking changes crl.pem's size (one more entry), so the watch's
	// stamp (mtime, size) changes whatever the file system's time grain.
	if err := pki.Revoke(e.pki, "temp-1"); err != nil {
		t.Fatal(err)
	}
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	e.gw = g
	testutil.Eventually(t, 10*time.Second, "the revoked device refused", func() bool {
		c, _, err := e.dial5("temp-1", "temp-1")
		if err == nil {
			c.Disconnect(&paho5.Disconnect{})
		}
		return err != nil
	})
}

// TestOverloaded: with the cloud away and the queue at its bound, MQTT 5
// devices get 0x97 and 3.1.1 devices get no acknowledgement, so they keep
// their data.
func TestOverloaded(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Cloud = []string{"ssl://127.0.0.1:1"} // nothing listens there
		c.Queue.MaxRecords = 3
	})
	e.device("ecg-1")
	e.device("ecg-2")
	c := e.mustDial5("ecg-1")
	for i := uint64(1); i <= 3; i++ {
		if code := publish5(t, c, telemetryTopic("ecg-1"), e.sign("ecg-1", spo2("ecg-1", i))); code != 0 {
			t.Fatalf("record %d: 0x%02x", i, code)
		}
	}
	if code := publish5(t, c, telemetryTopic("ecg-1"), e.sign("ecg-1", spo2("ecg-1", 4))); code != packets.ErrQuotaExceeded.Code {
		t.Fatalf("full queue: 0x%02x, want 0x97", code)
	}
	c3 := e.dial3("ecg-2")
	tok := c3.Publish(telemetryTopic("ecg-2"), 1, false, e.sign("ecg-2", spo2("ecg-2", 1)))
	if tok.WaitTimeout(500 * time.Millisecond) {
		t.Fatalf("3.1.1 device acknowledged while overloaded (err %v)", tok.Error())
	}
	if e.rejected("overloaded") != 2 || e.gw.Queue().Len() != 3 {
		t.Fatalf("overloaded %v, queue %d", e.rejected("overloaded"), e.gw.Queue().Len())
	}
}

// TestAuditLog: rejections are chained in the audit log, which verifies.
func TestAuditLog(t *testing.T) {
	e := newEnv(t, nil)
	e.device("w-1")
	c := e.mustDial5("w-1")
	for i := 0; i < 5; i++ {
		publish5(t, c, telemetryTopic("w-1"), []byte("junk"))
	}
	e.gw.Close()
	n, err := audit.Verify(filepath.Join(e.cfg.Data, AuditFile))
	if err != nil || n < 5 {
		t.Fatalf("audit verify: %d entries, %v", n, err)
	}
}

// TestRestartKeepsQueueAndSeq: what the cloud has not acknowledged stays
// queued across a restart, and so does each device's last seq.
func TestRestartKeepsQueueAndSeq(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Cloud = []string{"ssl://127.0.0.1:1"} })
	e.device("bp-9")
	c := e.mustDial5("bp-9")
	for i := uint64(1); i <= 5; i++ {
		if code := publish5(t, c, telemetryTopic("bp-9"), e.sign("bp-9", spo2("bp-9", i))); code != 0 {
			t.Fatalf("record %d: 0x%02x", i, code)
		}
	}
	c.Disconnect(&paho5.Disconnect{})
	e.gw.Close()
	// Restart on the same data directory, now with the embedded cloud.
	e.cfg.Cloud = nil
	e.start()
	if e.gw.Queue().Len() == 0 {
		t.Log("queue drained before the app subscribed; checking the seq only")
	}
	c = e.mustDial5("bp-9")
	if code := publish5(t, c, telemetryTopic("bp-9"), e.sign("bp-9", spo2("bp-9", 5))); code != packets.ErrImplementationSpecificError.Code {
		t.Fatalf("replay across restart: 0x%02x, want 0x83", code)
	}
	testutil.Eventually(t, 10*time.Second, "the queue to drain into the embedded cloud", func() bool { return e.gw.Queue().Len() == 0 })
}

// TestQuarantinedReconnectsTakeTheEventBudget: the start of a quarantine is
// always written; the refusals of a device that keeps reconnecting are
// bounded by its event budget (burst 50, then 5/s), so it cannot fill the
// audit log.
func TestQuarantinedReconnectsTakeTheEventBudget(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Quarantine.Violations, c.Quarantine.Window, c.Quarantine.Cooloff = 1, time.Minute, time.Hour
	})
	e.device("loop-1")
	c := e.mustDial5("loop-1")
	publish5(t, c, "devices/other/telemetry", []byte("x")) // acl_denied: quarantined at once
	testutil.Eventually(t, 10*time.Second, "the quarantine", func() bool { return e.metric("vitalgate_gateway_quarantines_total", "") == 1 })
	const attempts = 120
	start := time.Now()
	for range attempts {
		if _, _, err := e.dial5("loop-1", "loop-1"); err == nil {
			t.Fatal("quarantined device admitted")
		}
	}
	elapsed := time.Since(start)
	e.gw.Close()
	data, err := os.ReadFile(filepath.Join(e.cfg.Data, AuditFile))
	if err != nil {
		t.Fatal(err)
	}
	var starts, refusals int
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		var entry struct{ Event audit.Event }
		if err := json.Unmarshal(line, &entry); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		switch ev := entry.Event; {
		case ev.Dev != "loop-1" || ev.Verdict != "quarantined":
		case strings.HasPrefix(ev.Detail, "repeated violations"):
			starts++
		default:
			refusals++
		}
	}
	// The acl_denied event took one token of the burst.
	limit := 49 + int(5*elapsed.Seconds()) + 1
	if starts != 1 || refusals == 0 || refusals > limit {
		t.Fatalf("%d reconnects in %v: %d quarantine starts and %d refusals written, want 1 and 1 to %d",
			attempts, elapsed, starts, refusals, limit)
	}
	if e.metric("vitalgate_gateway_events_suppressed_total", "") == 0 {
		t.Fatal("nothing counted as suppressed")
	}
}

// TestNewFailsCleanly: a gateway that cannot start (here: its HTTP port is
// taken, the last thing New opens) returns an error instead of panicking,
// and closes what it had opened: the queue, the audit log and the embedded
// cloud, so the next start on the same data directory works.
func TestNewFailsCleanly(t *testing.T) {
	e := &env{t: t, pki: newPKI(t)}
	e.cfg = testConfig(t, e.pki)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	e.cfg.HTTP = busy.Addr().String()
	g, err := New(e.cfg, quietLog(t))
	if err == nil || g != nil || !strings.Contains(err.Error(), "http listener") {
		t.Fatalf("New with a taken HTTP port: %v, %v", g, err)
	}
	e.cfg.HTTP = "127.0.0.1:0"
	e.start() // fails if the queue's file lock was kept
	e.device("bp-n")
	c := e.mustDial5("bp-n")
	if code := publish5(t, c, telemetryTopic("bp-n"), e.sign("bp-n", spo2("bp-n", 1))); code != 0 {
		t.Fatalf("publish after the failed start: 0x%02x", code)
	}
}
