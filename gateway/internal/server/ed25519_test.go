package server

import (
	"fmt"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// TestEd25519Fleet: an EdDSA fleet's records are accepted and reach the
// cloud, and its forged ones (signed with another key, or with a flipped
// bit) get bad_signature with their events, whether the gateway checks
// EdDSA signatures in batches (ed25519_batch, the default) or each alone.
func TestEd25519Fleet(t *testing.T) {
	for _, batch := range []bool{true, false} {
		t.Run(fmt.Sprintf("ed25519_batch=%v", batch), func(t *testing.T) {
			e := newEnv(t, func(c *config.Config) { c.Ed25519Batch = batch })
			if (e.gw.batcher != nil) != batch {
				t.Fatalf("batcher %v with ed25519_batch %v", e.gw.batcher != nil, batch)
			}
			a := e.app("ssl://" + e.gw.Cloud().AppsAddr())
			const prefix, mode = "edf", string(verdict.BadSignature)
			cfg := e.attackFleet(prefix, mode, 6, 2)
			cfg.Key = string(pki.Ed25519)
			rep := runAttack(t, cfg)
			at := rep.Attack
			t.Logf("sent %d matched %d codes %v; stats %v", at.Sent, at.Matched, at.Codes, rep.Stats)
			if at.Sent == 0 || at.Matched != at.Sent || at.Code != "0x87" {
				t.Fatalf("%d of %d forged messages got %s (codes %v)", at.Matched, at.Sent, at.Code, at.Codes)
			}
			if got := e.rejected(mode); got != float64(at.Matched) {
				t.Errorf("rejected_total{verdict=%s} is %v, want %d", mode, got, at.Matched)
			}
			testutil.Eventually(t, 20*time.Second, "bad_signature events at the cloud", func() bool {
				return a.securityEvents(mode, prefix) >= int(at.Matched)
			})
			checkLegit(t, a, prefix, rep, []string{prefix + "-00003", prefix + "-00004", prefix + "-00005", prefix + "-00006"})

			// One flipped bit in a record of a legitimate EdDSA device.
			const dev = "edf-flip-00001"
			if err := pki.IssueDevice(e.pki, dev, pki.Ed25519, 30); err != nil {
				t.Fatal(err)
			}
			c := e.mustDial5(dev)
			good, bad := e.sign(dev, spo2(dev, 1)), e.sign(dev, spo2(dev, 2))
			bad[len(bad)-1] ^= 1
			if code := publish5(t, c, telemetryTopic(dev), bad); code != 0x87 {
				t.Errorf("flipped bit: reason 0x%02x, want 0x87", code)
			}
			if code := publish5(t, c, telemetryTopic(dev), good); code != 0 {
				t.Errorf("valid record: reason 0x%02x", code)
			}
			if batch {
				st := e.gw.batcher.Stats()
				if st.Batched+st.Alone+st.Inline == 0 {
					t.Errorf("no EdDSA signature went through the batcher: %+v", st)
				}
				m := e.metric("vitalgate_gateway_ed25519_checks_total", "batched") +
					e.metric("vitalgate_gateway_ed25519_checks_total", "alone") +
					e.metric("vitalgate_gateway_ed25519_checks_total", "inline")
				if m != float64(st.Batched+st.Alone+st.Inline) {
					t.Errorf("ed25519_checks_total sums to %v, the batcher counted %+v", m, st)
				}
			}
		})
	}
}
