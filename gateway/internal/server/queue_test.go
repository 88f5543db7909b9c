package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// auditHas reports whether the audit log in data has an entry with both
// strings.
func auditHas(t *testing.T, data, a, b string) bool {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(data, AuditFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if strings.Contains(l, a) && strings.Contains(l, b) {
			return true
		}
	}
	return false
}

// TestDamagedQueueAtStart: a queue cut short crashed the gateway, an empty
// one started without a word. Both are refused with one line saying what
// and how to go on; --reset-queue moves the file aside, starts an empty
// queue and records a queue_reset event.
func TestDamagedQueueAtStart(t *testing.T) {
	e := newEnv(t, nil)
	e.device("q-1")
	c := e.mustDial5("q-1")
	if code := publish5(t, c, telemetryTopic("q-1"), e.sign("q-1", spo2("q-1", 7))); code != 0 {
		t.Fatalf("publish: 0x%02x", code)
	}
	c.Disconnect(&paho5.Disconnect{})
	e.gw.Close()
	path := filepath.Join(e.cfg.Data, QueueFile)
	for _, c := range []struct {
		name string
		size int64
		want string
	}{{"cut to 64 KiB", 64 << 10, "queue corrupt"}, {"cut to 0 bytes", 0, "queue lost"}} {
		if c.size > 0 {
			// Grow the file first so that the cut loses pages in use.
			g, err := New(e.cfg, quietLog(t))
			if err != nil {
				t.Fatal(err)
			}
			for i := range 3000 {
				if err := g.Queue().Append("filler", uint64(i+1), make([]byte, 200)); err != nil {
					t.Fatal(err)
				}
			}
			g.Close()
		}
		if err := os.Truncate(path, c.size); err != nil {
			t.Fatal(err)
		}
		g, err := New(e.cfg, quietLog(t))
		if err == nil {
			g.Close()
			t.Fatalf("%s: the gateway started", c.name)
		}
		if msg := err.Error(); !strings.Contains(msg, c.want) || !strings.Contains(msg, "--reset-queue") || strings.Contains(msg, "\n") {
			t.Fatalf("%s: %q, want one line with %q and --reset-queue", c.name, msg, c.want)
		}
		e.cfg.ResetQueue = true
		e.start()
		if _, ok := e.gw.Queue().LastSeq("q-1"); ok {
			t.Fatalf("%s: the reset queue remembers q-1", c.name)
		}
		e.gw.Close()
		e.cfg.ResetQueue = false
		if !auditHas(t, e.cfg.Data, `"queue_reset"`, c.want) {
			t.Fatalf("%s: no queue_reset event in the audit log", c.name)
		}
		if _, err := audit.Verify(filepath.Join(e.cfg.Data, AuditFile)); err != nil {
			t.Fatal(err)
		}
	}
	moved, _ := filepath.Glob(path + ".corrupt-*")
	if len(moved) != 2 {
		t.Fatalf("files moved aside: %v, want 2", moved)
	}
}

// TestSeqJumpRefused: one record with seq 2^64-1, validly signed, made
// every later record of the device a replay. It is refused now (replay,
// "seq jump"), and the device goes on.
func TestSeqJumpRefused(t *testing.T) {
	e := newEnv(t, nil)
	e.device("j-1")
	c := e.mustDial5("j-1")
	if code := publish5(t, c, telemetryTopic("j-1"), e.sign("j-1", spo2("j-1", ^uint64(0)))); code != verdict.Replay.Code().Code {
		t.Fatalf("seq 2^64-1: 0x%02x, want replay", code)
	}
	for seq := uint64(1); seq <= 2; seq++ {
		if code := publish5(t, c, telemetryTopic("j-1"), e.sign("j-1", spo2("j-1", seq))); code != 0 {
			t.Fatalf("seq %d after the jump: 0x%02x", seq, code)
		}
	}
	if code := publish5(t, c, telemetryTopic("j-1"), e.sign("j-1", spo2("j-1", 3+e.cfg.MaxSeqJump))); code != verdict.Replay.Code().Code {
		t.Fatalf("a jump of max_seq_jump+1: 0x%02x, want replay", code)
	}
	c.Disconnect(&paho5.Disconnect{})
	e.gw.Close()
	if !auditHas(t, e.cfg.Data, `"replay"`, "seq jump") {
		t.Fatal("no replay event saying seq jump in the audit log")
	}
}
