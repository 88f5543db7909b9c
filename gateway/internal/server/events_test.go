package server

import (
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
)

func TestEventGate(t *testing.T) {
	g := newEventGate()
	now := time.Unix(1_800_000_000, 0)
	admitted := 0
	for i := 0; i < 1000; i++ {
		if g.admit(&audit.Event{Dev: "noisy", Verdict: "bad_signature"}, now, false) {
			admitted++
		}
	}
	if admitted != g.burstDev {
		t.Fatalf("a device's burst of 1000 events: %d admitted, want %d", admitted, g.burstDev)
	}
	// Another device and anonymous sources have their own budgets.
	if !g.admit(&audit.Event{Dev: "quiet"}, now, false) || !g.admit(&audit.Event{}, now, false) {
		t.Fatal("one source's flood took another's budget")
	}
	// The next admitted event of the noisy device says what was held back.
	e := audit.Event{Dev: "noisy", Detail: "signature does not verify"}
	if !g.admit(&e, now.Add(time.Second), false) {
		t.Fatal("budget did not refill")
	}
	if !strings.HasSuffix(e.Detail, "(+950 similar events suppressed)") {
		t.Fatalf("detail %q", e.Detail)
	}
}

// The start of a quarantine is written even when its device's budget is
// spent; the refusals that follow are not.
func TestEventGateKeepsQuarantines(t *testing.T) {
	g := newEventGate()
	now := time.Unix(1_800_000_000, 0)
	for i := 0; i < 100; i++ {
		g.admit(&audit.Event{Dev: "noisy", Verdict: "bad_signature"}, now, false)
	}
	if !g.admit(&audit.Event{Dev: "noisy", Verdict: "quarantined"}, now, true) {
		t.Fatal("quarantine event suppressed")
	}
	// The refusals of a quarantined device's reconnects take its budget.
	if g.admit(&audit.Event{Dev: "noisy", Verdict: "quarantined", Detail: "connection refused"}, now, false) {
		t.Fatal("a refusal got past a spent budget")
	}
}
