package server

import (
	"sync"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/testutil"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// signStatus encodes st and signs it with the key of device keyID.
func (e *env) signStatus(keyID string, st *telemetry.Status) []byte {
	e.t.Helper()
	b, err := telemetry.EncodeStatus(st)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.signRaw(keyID, b)
}

func statusRec(dev string, seq uint64) *telemetry.Status {
	return &telemetry.Status{V: 1, Dev: dev, Seq: seq, TS: time.Now().UnixMilli(), Kind: "status",
		Model: "acme-oxi-1", FW: "1.0.0"}
}

// TestStatusRecords: a device's status record on devices/{id}/status is
// verified like telemetry (signature, identity, the same replay window,
// time, values), handed to the gateway's status receivers once, and never
// relayed as telemetry; every rejection has its verdict, metric and event.
func TestStatusRecords(t *testing.T) {
	e := newEnv(t, nil)
	a := e.app("ssl://" + e.gw.Cloud().AppsAddr())
	var (
		mu  sync.Mutex
		got []telemetry.Status
	)
	e.gw.OnStatus(func(dev string, st *telemetry.Status) {
		mu.Lock()
		defer mu.Unlock()
		if dev != st.Dev {
			t.Errorf("status of %s handed over as %s", st.Dev, dev)
		}
		got = append(got, *st)
	})
	received := func() []telemetry.Status {
		mu.Lock()
		defer mu.Unlock()
		return append([]telemetry.Status(nil), got...)
	}
	e.device("stx-1")
	e.device("stx-2")
	c := e.mustDial5("stx-1")
	topic := "devices/stx-1/status"

	if rc := publish5(t, c, telemetryTopic("stx-1"), e.sign("stx-1", spo2("stx-1", 10))); rc != 0 {
		t.Fatalf("telemetry seq 10: 0x%02x", rc)
	}
	first := e.signStatus("stx-1", statusRec("stx-1", 11))
	if rc := publish5(t, c, topic, first); rc != 0 {
		t.Fatalf("status seq 11: 0x%02x", rc)
	}
	if rc := publish5(t, c, topic, first); rc != 0 { // a resend after a lost PUBACK
		t.Fatalf("resend of status seq 11: 0x%02x", rc)
	}
	if s := received(); len(s) != 1 || s[0].Seq != 11 || s[0].Model != "acme-oxi-1" || s[0].FW != "1.0.0" {
		t.Fatalf("handed over %+v, want the status of seq 11 once", s)
	}

	wrongModel := statusRec("stx-1", 30)
	wrongModel.FW = "one"
	cases := []struct {
		name  string
		topic string
		msg   []byte
		want  verdict.Verdict
	}{
		{"status replays telemetry's seq", topic, e.signStatus("stx-1", statusRec("stx-1", 10)), verdict.Replay},
		{"telemetry replays status's seq", telemetryTopic("stx-1"), e.sign("stx-1", spo2("stx-1", 11)), verdict.Replay},
		{"forged: signed by another device", topic, e.signStatus("stx-2", statusRec("stx-1", 20)), verdict.BadSignature},
		{"another device's status", topic, e.signStatus("stx-1", statusRec("stx-2", 21)), verdict.IdentityMismatch},
		{"another device's topic", "devices/stx-2/status", e.signStatus("stx-1", statusRec("stx-1", 22)), verdict.ACLDenied},
		{"telemetry on the status topic", topic, e.sign("stx-1", spo2("stx-1", 23)), verdict.Malformed},
		{"status on the telemetry topic", telemetryTopic("stx-1"), e.signStatus("stx-1", statusRec("stx-1", 24)), verdict.Malformed},
		{"fw not a version", topic, e.signStatus("stx-1", wrongModel), verdict.Schema},
	}
	for _, tc := range cases {
		before := e.rejected(string(tc.want))
		if rc := publish5(t, c, tc.topic, tc.msg); rc != tc.want.Code().Code {
			t.Errorf("%s: 0x%02x, want %s (0x%02x)", tc.name, rc, tc.want, tc.want.Code().Code)
		}
		if e.rejected(string(tc.want)) != before+1 {
			t.Errorf("%s: rejected_total{verdict=%s} did not rise", tc.name, tc.want)
		}
	}
	future := statusRec("stx-1", 40)
	future.TS = time.Now().Add(time.Hour).UnixMilli()
	if rc := publish5(t, c, topic, e.signStatus("stx-1", future)); rc != verdict.Future.Code().Code {
		t.Errorf("future status: 0x%02x", rc)
	}
	testutil.Eventually(t, 10*time.Second, "the bad_signature event at the cloud", func() bool {
		return a.securityEvents(string(verdict.BadSignature), "stx") >= 1
	})
	if s := received(); len(s) != 1 {
		t.Fatalf("%d status records handed over, want 1: %+v", len(s), s)
	}
	// The next status and telemetry records go on from the shared window.
	if rc := publish5(t, c, topic, e.signStatus("stx-1", statusRec("stx-1", 50))); rc != 0 {
		t.Fatalf("status seq 50: 0x%02x", rc)
	}
	if rc := publish5(t, c, telemetryTopic("stx-1"), e.sign("stx-1", spo2("stx-1", 51))); rc != 0 {
		t.Fatalf("telemetry seq 51: 0x%02x", rc)
	}
	testutil.Eventually(t, 10*time.Second, "telemetry seq 51 at the cloud", func() bool { return a.ids()["stx-1:51"] == 1 })
	for id := range a.ids() {
		if id == "stx-1:11" || id == "stx-1:50" {
			t.Errorf("status record %s relayed as telemetry", id)
		}
	}
	if s := received(); len(s) != 2 || s[1].Seq != 50 {
		t.Fatalf("handed over %+v", s)
	}
	if n, _ := e.gw.queue.LastSeq("stx-1"); n != 51 {
		t.Fatalf("last seq %d", n)
	}
}
