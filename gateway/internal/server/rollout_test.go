package server

import (
	"context"
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/gateway/internal/jobs"
	"github.com/vitalgate/vitalgate/internal/cloud"
	"github.com/vitalgate/vitalgate/internal/fleet"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
	"github.com/vitalgate/vitalgate/internal/update"
	"github.com/vitalgate/vitalgate/internal/updrepo"
)

// rolloutVersion is the firmware the rollouts install (the devices start
// at fleet.FactoryFirmware).
const rolloutVersion = "1.1.0"

// rolloutModel is the model of the fleets' devices (all oximeters).
var rolloutModel = fleet.ModelOf("spo2")

// rolloutEnv is a PKI with update keys and a repository holding one signed
// image of rolloutModel, a standalone cloud broker serving the repository
// to the gateway, the gateway, a clinician app and an operator at the
// cloud.
type rolloutEnv struct {
	*env
	app *app      // clinician: telemetry and security events
	op  *jobWatch // operator: publishes jobs, follows jobs/ and inventory/
	sha string    // the image's SHA-256, hex
}

func newRolloutEnv(t *testing.T) *rolloutEnv {
	t.Helper()
	e := &env{t: t, pki: newPKI(t)}
	repo := filepath.Join(t.TempDir(), "repo")
	image := make([]byte, 16<<10) // small: the rollout, not the transfer, is under test
	for i := range image {
		image[i] = byte(i*7 + i>>8)
	}
	publishImage(t, e.pki, repo, image)
	sum := sha256.Sum256(image)

	c := cloud.Default()
	c.PKI, c.Data, c.Listen, c.Apps, c.WS, c.HTTP = e.pki, t.TempDir(), "127.0.0.1:0", "127.0.0.1:0", "", ""
	c.Updates, c.Repo = "127.0.0.1:0", repo
	cl, err := cloud.New(c, quietLog(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })

	e.cfg = testConfig(t, e.pki)
	e.cfg.Cloud = []string{"ssl://" + cl.GatewayAddr()}
	e.cfg.Updates.URL = "https://" + cl.UpdatesAddr()
	e.start()
	r := &rolloutEnv{env: e, sha: fmt.Sprintf("%x", sum)}
	r.app = e.app("ssl://" + cl.AppsAddr())
	tok, err := pki.MintRoleToken(e.pki, "ops", pki.RoleOperator, []string{"site1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	r.op = e.watchJobs("ssl://"+cl.AppsAddr(), "ops", tok)
	return r
}

// publishImage does what `certs update-init` and `certs firmware` do: the
// update keys, a repository, and image as rolloutModel rolloutVersion, seq 1.
func publishImage(t *testing.T, pkiDir, repo string, image []byte) {
	t.Helper()
	if err := updrepo.Setup(pkiDir, repo, pki.P256, time.Now()); err != nil {
		t.Fatal(err)
	}
	m := &update.Manifest{V: 1, Vendor: "VitalGate", Model: rolloutModel, Version: rolloutVersion, Seq: 1,
		NotAfter: time.Now().Add(24 * time.Hour).UnixMilli()}
	if _, err := updrepo.Publish(pkiDir, repo, m, image, time.Now()); err != nil {
		t.Fatal(err)
	}
}

// updFleet is a fleet of oximeters prefix-00001.. that take updates from
// the gateway's HTTPS listener, at a low telemetry rate.
func (r *rolloutEnv) updFleet(prefix string, devices int, d time.Duration) fleet.Config {
	c := fleet.Default()
	c.PKI, c.Gateway, c.HTTPS, c.Prefix, c.Devices = r.pki, r.gw.DeviceAddr(), r.gw.HTTPSAddr(), prefix, devices
	c.Kinds = []string{"spo2"}
	c.Rate, c.QoS, c.MQTT = 0.5, 1, fleet.MQTTMix
	c.Duration, c.Drain = d, 20*time.Second
	c.State = r.t.TempDir()
	c.Progress = 5 * time.Second
	c.Logger = quietLog(r.t)
	return c
}

// fleetRun is a fleet running in the background.
type fleetRun struct {
	done chan struct{}
	rep  fleet.Report
	err  error
}

func startFleet(t *testing.T, cfg fleet.Config) *fleetRun {
	f := &fleetRun{done: make(chan struct{})}
	go func() {
		defer close(f.done)
		f.rep, f.err = fleet.Run(context.Background(), cfg, func(s fleet.Stats) { t.Logf("%s %s", cfg.Prefix, s) })
	}()
	t.Cleanup(func() { <-f.done })
	return f
}

func (f *fleetRun) wait(t *testing.T) fleet.Stats {
	t.Helper()
	select {
	case <-f.done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the fleet did not stop")
	}
	if f.err != nil {
		t.Fatal(f.err)
	}
	return f.rep.Stats
}

func ids(prefix string, n int) []string {
	var out []string
	for i := 1; i <= n; i++ {
		out = append(out, fmt.Sprintf("%s-%05d", prefix, i))
	}
	return out
}

// known waits until the gateway knows every device's model from its
// status record at connect (a job names known devices only).
func (r *rolloutEnv) known(devs []string) {
	r.t.Helper()
	testutil.Eventually(r.t, 60*time.Second, fmt.Sprintf("the inventory entries of %d devices", len(devs)), func() bool {
		for _, d := range devs {
			if inv := r.op.inventory(d); inv == nil || inv["model"] != rolloutModel {
				return false
			}
		}
		return true
	})
}

func rolloutJob(id string, devs []string, waves []int, abort float64) map[string]any {
	return map[string]any{"v": 1, "job": id, "model": rolloutModel, "version": rolloutVersion, "devices": devs,
		"waves": waves, "abort_failures": abort, "deadline": time.Now().Add(10 * time.Minute).UnixMilli()}
}

// TestRollout200: 200 oximeters sending telemetry take a rollout in three
// waves (10, 50, 100 %) from the real broker (operator token, repository
// over HTTPS), gateway (TUF client, jobs, firmware route) and simulator
// (manifest check, download, install, reconnect): every device ends on the
// new version, no wave starts before the one before it is final, and not
// one telemetry record is lost or rejected meanwhile.
func TestRollout200(t *testing.T) {
	if testing.Short() {
		t.Skip("a 200-device rollout")
	}
	const devices = 200
	r := newRolloutEnv(t)
	devs := ids("ro", devices)
	f := startFleet(t, r.updFleet("ro", devices, 50*time.Second))
	r.known(devs)

	start := time.Now()
	if err := r.op.publishJob("fw-1.1.0", rolloutJob("fw-1.1.0", devs, []int{10, 50, 100}, 0.2)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 60*time.Second, "every device succeeded", func() bool {
		return len(r.op.states("fw-1.1.0")[jobs.Succeeded]) == devices
	})
	t.Logf("rollout of %d devices in %v", devices, time.Since(start).Round(100*time.Millisecond))
	if st := r.op.states("fw-1.1.0"); len(st) != 1 {
		t.Errorf("states other than succeeded: %v", counts(st))
	}
	// Waves: 20 devices, then 80 more, then 100 more. A device of a later
	// wave gets its command only once every device of the earlier waves is
	// final: in every summary the gateway relayed, the devices past
	// pending fit in the waves the final ones allow, and the waves come in
	// order.
	bound := func(final int) (int, int) {
		switch {
		case final < 20:
			return 20, 1
		case final < 100:
			return 100, 2
		}
		return devices, 3
	}
	var waves []int
	sums := r.op.summaries("fw-1.1.0")
	for _, s := range sums {
		final := s.Counts[jobs.Succeeded] + s.Counts[jobs.Failed] + s.Counts[jobs.Rejected] + s.Counts[jobs.TimedOut]
		started := devices - s.Counts[jobs.Pending]
		if most, wave := bound(final); started > most || s.Wave > wave {
			t.Errorf("summary %+v: %d devices past pending in wave %d with %d final: a wave started early", s, started, s.Wave, final)
		}
		if len(waves) == 0 || waves[len(waves)-1] != s.Wave {
			waves = append(waves, s.Wave)
		}
	}
	t.Logf("%d summaries, waves %v", len(sums), waves)
	if !slices.IsSorted(waves) || len(waves) == 0 || waves[len(waves)-1] != 3 {
		t.Errorf("summary waves %v, want 1, 2, 3 in order", waves)
	}
	if s := r.op.summary("fw-1.1.0"); s == nil || s["done"] != true || s["aborted"] != false {
		t.Errorf("summary %v: want done, not aborted", s)
	}
	// Each device reconnected and reported the new version: the inventory
	// at the cloud says so.
	testutil.Eventually(t, 30*time.Second, "every device on "+rolloutVersion+" in the inventory at the cloud", func() bool {
		for _, d := range devs {
			if inv := r.op.inventory(d); inv == nil || inv["fw"] != rolloutVersion {
				return false
			}
		}
		return true
	})

	s := f.wait(t)
	t.Logf("fleet: %s; connects %d resent %d duplicates %d", s, s.Connects, s.Resent, s.Duplicates)
	if s.Connects < 2*devices {
		t.Errorf("connects %d: want each device's first and its reconnection after the install", s.Connects)
	}
	if len(s.Rejected) != 0 || s.Dropped != 0 || s.Buffered != 0 || s.Acked != s.Generated {
		t.Errorf("generated %d acked %d dropped %d buffered %d rejected %v: every record must be accepted",
			s.Generated, s.Acked, s.Dropped, s.Buffered, s.Rejected)
	}
	testutil.Eventually(t, 30*time.Second, fmt.Sprintf("%d accepted records at the cloud", s.Acked), func() bool {
		return uint64(r.app.idsWithPrefix("ro")) >= s.Acked
	})
	if got := uint64(r.app.idsWithPrefix("ro")); got != s.Acked {
		t.Errorf("cloud has %d distinct records, the fleet saw %d accepted", got, s.Acked)
	}
	// Status records take seqs from the same counter and are not relayed:
	// the only seqs missing between a device's records at the cloud.
	gaps := 0
	for _, g := range r.app.seqGaps("ro") {
		gaps += len(g)
	}
	if uint64(gaps) > s.Statuses || s.StatusRefused != 0 {
		t.Errorf("%d seqs missing at the cloud, %d status records accepted, %d refused: records lost", gaps, s.Statuses, s.StatusRefused)
	}
	for _, v := range []string{"bad_signature", "replay", "identity_mismatch", "stale", "rate_limited", "malformed"} {
		if n := r.rejected(v); n > 0 {
			t.Errorf("gateway rejected %v messages as %s", n, v)
		}
	}
	if n := r.app.eventsWith("update_denied") + r.app.eventsWith("job_refused") + r.app.eventsWith("update_rejected"); n > 0 {
		t.Errorf("%d update security events in a clean rollout", n)
	}
}

// counts is the number of devices per state.
func counts(st map[string][]string) map[string]int {
	c := map[string]int{}
	for k, v := range st {
		c[k] = len(v)
	}
	return c
}

// TestRolloutAbort: 20 devices in waves of 20, 60 and 100 %, abort above
// 30 % failed: wave 1 (ra, 1 of 4 fails: 25 %) passes, wave 2 (rb, 3 of 8
// more fail: 4 of 12 is 33 %) crosses the threshold and the job aborts;
// the 8 devices of wave 3 (rc) never get the command and keep their
// firmware.
func TestRolloutAbort(t *testing.T) {
	r := newRolloutEnv(t)
	// Devices sort ra < rb < rc, the order of the job's list too.
	ra := r.updFleet("ra", 4, 30*time.Second)
	ra.Attack, ra.Attackers = fleet.AttackFailInstall, 1
	rb := r.updFleet("rb", 8, 30*time.Second)
	rb.Attack, rb.Attackers = fleet.AttackFailInstall, 3
	rc := r.updFleet("rc", 8, 30*time.Second)
	runs := []*fleetRun{startFleet(t, ra), startFleet(t, rb), startFleet(t, rc)}
	devs := append(append(ids("ra", 4), ids("rb", 8)...), ids("rc", 8)...)
	r.known(devs)

	if err := r.op.publishJob("fw-abort", rolloutJob("fw-abort", devs, []int{20, 60, 100}, 0.3)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 60*time.Second, "the job aborted and done", func() bool {
		s := r.op.summary("fw-abort")
		return s != nil && s["aborted"] == true && s["done"] == true
	})
	s := r.op.summary("fw-abort")
	t.Logf("summary: %v", s)
	if s["wave"] != float64(2) {
		t.Errorf("aborted in wave %v, want 2", s["wave"])
	}
	if reason, _ := s["reason"].(string); !strings.Contains(reason, "threshold 0.3") {
		t.Errorf("abort reason %q: want the threshold", reason)
	}
	st := r.op.states("fw-abort")
	for _, d := range ids("rc", 8) {
		if slices.Contains(st[jobs.Pending], d) {
			continue
		}
		for state, ds := range st {
			if slices.Contains(ds, d) {
				t.Errorf("%s of wave 3 is %s: the command went out after the abort", d, state)
			}
		}
	}
	// 4 of 12 attempted cross 30 %: all four failing devices, no fewer.
	failed := st[jobs.Failed]
	slices.Sort(failed)
	if want := []string{"ra-00001", "rb-00001", "rb-00002", "rb-00003"}; !slices.Equal(failed, want) {
		t.Errorf("failed %v, want %v", failed, want)
	}
	if n := len(st[jobs.Succeeded]); n != 8 {
		t.Errorf("succeeded %d, want the 8 other devices of waves 1 and 2 (%v)", n, counts(st))
	}
	for _, f := range runs {
		f.wait(t)
	}
	// The devices of wave 3 still run the factory firmware.
	for _, d := range ids("rc", 8) {
		if inv := r.op.inventory(d); inv == nil || inv["fw"] != fleet.FactoryFirmware {
			t.Errorf("%s: inventory %v, want fw %s", d, inv, fleet.FactoryFirmware)
		}
	}
	if n := r.app.eventsWith("update_denied"); n > 0 {
		t.Errorf("%d update_denied events", n)
	}
}
