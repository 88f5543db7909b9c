package sim

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/jobmsg"
)

const rolloutHead = "cloud: {url: ssl://127.0.0.1:1, site: s1, token_file: t}\nphases:\n  - duration: 1s\n    fleets: [{name: a}]\n"

// TestParseRollout: a rollout action becomes the job an operator would
// publish, and the expectations on it are known metrics.
func TestParseRollout(t *testing.T) {
	sc, err := Parse("r.yaml", []byte(rolloutHead+`    do:
      - rollout: {kind: spo2, version: 1.2.0, seq: 3, waves: [50, 100], abort_failures: 0.5, deadline: 10m}
    expect:
      updated: 3
      rollout: {succeeded: 3, failed: 1, done: 1, aborted: 0}
`))
	if err != nil {
		t.Fatal(err)
	}
	ro := sc.Phases[0].Do[0].Rollout
	if ro == nil || ro.Model != "acme-oxi-1" || ro.Job != "acme-oxi-1-1.2.0" || ro.Seq != 3 || !ro.Publish || ro.Deadline != 10*time.Minute {
		t.Fatalf("%+v", ro)
	}
	now := time.Now()
	if j := ro.job(now); j.Deadline != now.Add(10*time.Minute).UnixMilli() || len(j.Waves) != 2 || j.AbortFailures != 0.5 || j.Check() != nil {
		t.Errorf("job %+v", j)
	}
	var metrics []string
	for _, e := range sc.Phases[0].Expect {
		metrics = append(metrics, e.Metric)
	}
	if strings.Join(metrics, " ") != "updated rollout.succeeded rollout.failed rollout.done rollout.aborted" {
		t.Errorf("expectations %v", metrics)
	}
}

// TestParseRolloutErrors: each bad rollout is one error at its line.
func TestParseRolloutErrors(t *testing.T) {
	do := func(r string) string { return rolloutHead + "    do:\n      - rollout: " + r + "\n" }
	for _, c := range []struct{ name, yaml, want string }{
		{"unknown key", do("{kind: spo2, version: 1.1.0, wave: [100]}"), `r.yaml:6: rollout: unknown key "wave"`},
		{"no model", do("{version: 1.1.0}"), "r.yaml:6: rollout: no model (or kind)"},
		{"both", do("{kind: spo2, model: m, version: 1.1.0}"), "r.yaml:6: rollout: model or kind, not both"},
		{"bad kind", do("{kind: toaster, version: 1.1.0}"), `r.yaml:6: rollout: unknown kind "toaster"`},
		{"bad version", do("{kind: spo2, version: new}"), `r.yaml:6: rollout: version "new" is not a semantic version`},
		{"bad waves", do("{kind: spo2, version: 1.1.0, waves: [10, 50]}"), "r.yaml:6: rollout: waves [10 50]: the last wave must be 100"},
		{"bad fraction", do("{kind: spo2, version: 1.1.0, abort_failures: 2}"), "r.yaml:6: rollout: abort_failures 2: want a fraction"},
		{"no cloud", "phases:\n  - duration: 1s\n    fleets: [{name: a}]\n    do: [{rollout: {kind: spo2, version: 1.1.0}}]\n",
			"r.yaml:4: do: a rollout is published at the cloud: it needs a cloud section"},
		{"two actions", do("{kind: spo2, version: 1.1.0}\n        hook: x"), "r.yaml:6: do: want exactly one of hook, exec or rollout"},
		{"unknown metric", do("{kind: spo2, version: 1.1.0}") + "    expect: {rollout: {installed: 3}}\n",
			`r.yaml:7: expect: unknown rollout metric "installed"`},
		{"no rollout", rolloutHead + "    expect: {rollout: {failed: 0}}\n", "r.yaml:5: expect: rollout.failed needs a rollout action"},
		{"updated, no rollout", rolloutHead + "    expect: {updated: 1}\n", "r.yaml:5: expect: updated needs a rollout action"},
	} {
		_, err := Parse("r.yaml", []byte(c.yaml))
		var fe *FileError
		if err == nil || !errors.As(err, &fe) || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

// TestRolloutWithoutRepo: a rollout that publishes needs the update
// repository; the run stops before anything runs.
func TestRolloutWithoutRepo(t *testing.T) {
	sc, err := Parse("r.yaml", []byte(rolloutHead+"    do: [{rollout: {kind: spo2, version: 1.1.0}}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Run(context.Background(), sc, Options{Gateway: "127.0.0.1:1"})
	if err == nil || err.Error() != "r.yaml:5: rollout: publish needs the update repository (repo:, or --repo)" {
		t.Fatalf("%v", err)
	}
}

// TestRolloutMetrics: the phase's rollout metrics come from the job's
// summary and the inventory entries the cloud relays; other jobs, other
// models and cleared messages do not count.
func TestRolloutMetrics(t *testing.T) {
	w := &watcher{jobs: map[string]*jobmsg.Summary{}, firmware: map[string][2]string{}}
	r := &run{w: w, rollout: &Rollout{Job: "j1", Model: "acme-oxi-1", Version: "1.1.0"}}
	if r.rolloutSettled() {
		t.Fatal("settled before any summary")
	}
	w.handleRollout("jobs/s1/j1/status", []byte(`{"v":1,"job":"j1","model":"acme-oxi-1","version":"1.1.0","wave":2,"waves":2,"counts":{"succeeded":2,"failed":1},"aborted":false,"done":true,"ts":1}`))
	w.handleRollout("jobs/s1/j0/status", []byte(`{"v":1,"job":"j0","counts":{"succeeded":9},"done":true}`))
	w.handleRollout("jobs/s1/j2/status", nil)
	w.handleRollout("jobs/s1/j3/status", []byte(`not json`))
	for dev, mf := range map[string][2]string{"oxi-1": {"acme-oxi-1", "1.1.0"}, "oxi-2": {"acme-oxi-1", "1.0.0"}, "bp-1": {"acme-bp-1", "1.1.0"}} {
		w.handleRollout("inventory/s1/"+dev, []byte(`{"v":1,"dev":"`+dev+`","model":"`+mf[0]+`","fw":"`+mf[1]+`"}`))
	}
	if r.rolloutSettled() {
		t.Fatal("settled while the inventory shows 1 of 2 devices that succeeded")
	}
	w.handleRollout("inventory/s1/oxi-2", []byte(`{"v":1,"dev":"oxi-2","model":"acme-oxi-1","fw":"1.1.0"}`))
	if !r.rolloutSettled() {
		t.Fatal("not settled once the inventory shows every device that succeeded")
	}
	m := map[string]float64{}
	r.rolloutMetrics(m)
	want := map[string]float64{"rollout.succeeded": 2, "rollout.failed": 1, "rollout.pending": 0, "rollout.devices": 3,
		"rollout.done": 1, "rollout.aborted": 0, "rollout.wave": 2, "updated": 2}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
	if w.badMsgs != 1 {
		t.Errorf("bad messages %d, want 1", w.badMsgs)
	}
}
