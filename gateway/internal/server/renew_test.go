package server

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/internal/fleet"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// enrolFleet is a fleet of devices prefix-00001.. that start from factory
// identities and enrol over the gateway's EST listener.
func (e *env) enrolFleet(prefix string, devices int, rate float64, d time.Duration) fleet.Config {
	e.t.Helper()
	if _, err := pki.IssueFactory(e.pki, pki.FactoryOptions{Count: devices, Prefix: prefix}); err != nil {
		e.t.Fatal(err)
	}
	c := fleet.Default()
	c.PKI = e.pki
	c.Gateway = e.gw.DeviceAddr()
	c.Enroll = true
	c.EST = "https://" + e.gw.HTTPSAddr()
	c.Prefix = prefix
	c.Devices = devices
	c.Rate = rate
	c.Duration = d
	c.Drain = 20 * time.Second
	c.MQTT = fleet.MQTTMix // both MQTT clients switch certificates
	c.QoS = 1
	c.State = "-"
	c.Progress = 10 * time.Second
	c.Logger = quietLog(e.t) // failed renewals are warnings
	return c
}

// seqGaps lists, per device of prefix, the seqs missing at the cloud
// between the device's first and last record there.
func (a *app) seqGaps(prefix string) map[string][]uint64 {
	seqs := map[string][]uint64{}
	for id := range a.ids() {
		dev, s, ok := strings.Cut(id, ":")
		if !ok || !strings.HasPrefix(dev, prefix+"-") {
			continue
		}
		n, err := strconv.ParseUint(s, 10, 64)
		if err == nil {
			seqs[dev] = append(seqs[dev], n)
		}
	}
	gaps := map[string][]uint64{}
	for dev, ss := range seqs {
		slices.Sort(ss)
		for i := 1; i < len(ss) && len(gaps[dev]) < 10; i++ {
			for m := ss[i-1] + 1; m < ss[i] && len(gaps[dev]) < 10; m++ {
				gaps[dev] = append(gaps[dev], m)
			}
		}
		if len(gaps[dev]) == 0 {
			delete(gaps, dev)
		}
	}
	return gaps
}

// TestRenewalLosesNothing: 50 devices at 5 records a second from factory
// identities, with 1-minute certificates, go through at least three
// renewals each (new key, reconnect with the new certificate) while they
// send: every record is accepted and reaches the cloud, none is lost or
// rejected.
func TestRenewalLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 2.5 minutes")
	}
	const devices, rate = 50, 5.0
	e := newEnv(t, func(c *config.Config) {
		c.HTTPS = "127.0.0.1:0"
		c.Enroll.Validity = time.Minute
	})
	a := e.app("ssl://" + e.gw.Cloud().AppsAddr())
	// Renewal at two thirds of 60 s: at 40, 80 and 120 s, each a little
	// later by the switch.
	cfg := e.enrolFleet("rnw", devices, rate, 130*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var last fleet.Stats
	rep, err := fleet.Run(ctx, cfg, func(s fleet.Stats) { last = s; t.Logf("%s", s) })
	if err != nil {
		t.Fatal(err)
	}
	s := rep.Stats
	t.Logf("final: %s; connects %d resent %d duplicates %d", last, s.Connects, s.Resent, s.Duplicates)

	// A renewal that fails (a timeout on a loaded machine) is retried long
	// before expiry: no device has to enrol again.
	if s.Enrolments != devices {
		t.Errorf("enrolments %d, want %d (one per device: none expired)", s.Enrolments, devices)
	}
	if s.EnrolErrors > 0 {
		t.Logf("%d renewals failed and were retried", s.EnrolErrors)
	}
	if s.Renewals < 3*devices {
		t.Errorf("renewals %d, want at least %d (three per device)", s.Renewals, 3*devices)
	}
	if s.Connects < devices+s.Renewals {
		t.Errorf("connects %d: fewer than the first connections and one per renewal (%d)", s.Connects, devices+s.Renewals)
	}
	if len(s.Rejected) != 0 || len(s.Codes) != 1 || s.Codes["0x00"] == 0 {
		t.Errorf("rejected %v, reason codes %v: want only 0x00", s.Rejected, s.Codes)
	}
	for _, v := range []string{"bad_signature", "replay", "identity_mismatch", "stale", "rate_limited"} {
		if n := e.rejected(v); n > 0 {
			t.Errorf("gateway rejected %v records as %s", n, v)
		}
	}
	// A switch waits for the PUBACKs in flight on the old connection:
	// nothing is sent twice, and no publish goes unanswered.
	if s.Resent != 0 || s.Errors != 0 || s.Duplicates != 0 {
		t.Errorf("resent %d, publish errors %d, duplicates %d: want none", s.Resent, s.Errors, s.Duplicates)
	}
	if s.Dropped != 0 || s.Buffered != 0 || s.Acked != s.Generated {
		t.Errorf("generated %d acked %d dropped %d buffered %d: every record must be accepted", s.Generated, s.Acked, s.Dropped, s.Buffered)
	}
	if min := uint64(float64(devices) * rate * 100); s.Acked < min {
		t.Errorf("acked %d, want at least %d (the fleet's rate)", s.Acked, min)
	}
	testutil.Eventually(t, 30*time.Second, fmt.Sprintf("%d accepted records at the cloud", s.Acked), func() bool {
		return uint64(a.idsWithPrefix("rnw")) >= s.Acked
	})
	if got := uint64(a.idsWithPrefix("rnw")); got != s.Acked {
		t.Errorf("cloud has %d distinct records, the fleet saw %d accepted", got, s.Acked)
	}
	if gaps := a.seqGaps("rnw"); len(gaps) > 0 {
		t.Errorf("seqs missing at the cloud: %v", gaps)
	}
}
