package view

import (
	"fmt"
	"strings"
	"testing"
)

// TestRolloutWaves: a job of 20 devices in waves of 10, 50 and 100 %
// shows per wave how many of its devices are final, from the devices'
// status messages, and the wave under way from the gateway's summary.
func TestRolloutWaves(t *testing.T) {
	v := New()
	var devs []string
	for i := range 20 {
		devs = append(devs, fmt.Sprintf("d-%02d", i))
	}
	job := fmt.Sprintf(`{"v":1,"job":"fw2","model":"acme-oxi-1","version":"1.1.0","devices":["%s"],"waves":[10,50,100],"abort_failures":0.2,"deadline":1}`,
		strings.Join(devs, `","`))
	if err := v.Job("jobs/site1/fw2", []byte(job)); err != nil {
		t.Fatal(err)
	}
	state := func(dev, st string) {
		t.Helper()
		if err := v.Job("jobs/site1/fw2/status/"+dev, fmt.Appendf(nil, `{"v":1,"job":"fw2","dev":%q,"state":%q,"ts":1}`, dev, st)); err != nil {
			t.Fatal(err)
		}
	}
	// Wave 1 (2 devices) final, wave 2 (8 more) under way: 5 succeeded,
	// 1 failed, 2 downloading.
	for i := range 7 {
		state(devs[i], "succeeded")
	}
	state(devs[7], "failed")
	state(devs[8], "downloading")
	state(devs[9], "downloading")
	if err := v.Job("jobs/site1/fw2/status", []byte(`{"v":1,"job":"fw2","wave":2,"aborted":false,"counts":{"pending":10,"succeeded":7,"failed":1,"downloading":2}}`)); err != nil {
		t.Fatal(err)
	}
	s := v.Snapshot()
	if len(s.Rollouts) != 1 {
		t.Fatalf("rollouts %d, want 1", len(s.Rollouts))
	}
	r := s.Rollouts[0]
	if r.Devices() != 20 || r.Wave != 2 {
		t.Errorf("devices %d wave %d, want 20 and 2", r.Devices(), r.Wave)
	}
	want := []WaveProgress{{10, 2, 2, true}, {50, 8, 6, true}, {100, 10, 0, false}}
	got := r.WaveProgress()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("waves %v, want %v", got, want)
	}
	var b strings.Builder
	if err := Render(&b, s, Options{}); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, line := range []string{
		"rollout fw2: acme-oxi-1 to 1.1.0, 20 devices, wave 2 of 3: downloading 2 succeeded 7 failed 1\n",
		"  wave 1  10%  [####################] 2/2 final\n",
		"  wave 2  50%  [###############.....] 6/8 \n",
		"  wave 3 100%  [....................] 0/10 waiting\n",
	} {
		if !strings.Contains(out, line) {
			t.Errorf("render lacks %q:\n%s", line, out)
		}
	}

	// All final: done. Then an abort shows on a second job.
	for i := 8; i < 20; i++ {
		state(devs[i], "succeeded")
	}
	b.Reset()
	Render(&b, v.Snapshot(), Options{})
	if !strings.Contains(b.String(), "20 devices, done: succeeded 19 failed 1") {
		t.Errorf("finished rollout:\n%s", b.String())
	}
	v.Job("jobs/site1/fw3", []byte(`{"v":1,"job":"fw3","model":"m","version":"2.0.0","waves":[50,100]}`))
	v.Job("jobs/site1/fw3/status", []byte(`{"v":1,"job":"fw3","wave":1,"aborted":true,"counts":{"failed":3,"succeeded":1,"pending":4}}`))
	b.Reset()
	Render(&b, v.Snapshot(), Options{})
	for _, line := range []string{"rollout fw3: m to 2.0.0, 8 devices, ABORTED: pending 4 succeeded 1 failed 3\n", "  wave 2 100%  [....................] 0/4 stopped\n"} {
		if !strings.Contains(b.String(), line) {
			t.Errorf("aborted rollout: render lacks %q:\n%s", line, b.String())
		}
	}
}

// TestRolloutBadMessages: messages that are not part of a job's tree, or
// do not parse, are errors; the view follows a bounded number of jobs.
func TestRolloutBadMessages(t *testing.T) {
	v := New()
	for _, tc := range []struct{ topic, payload string }{
		{"jobs/site1", `{}`},
		{"jobs/site1/j/other", `{}`},
		{"jobs/site1/j/status/d/x", `{}`},
		{"telemetry/site1/j", `{}`},
		{"jobs/site1/j", `not json`},
		{"jobs/site1/j/status", `[1]`},
		{"jobs/site1/j/status/d", `{"v":1}`},
	} {
		if err := v.Job(tc.topic, []byte(tc.payload)); err == nil {
			t.Errorf("%s %s: no error", tc.topic, tc.payload)
		}
	}
	for i := range maxJobs + 3 {
		v.Job(fmt.Sprintf("jobs/site1/j%d", i), []byte(`{"v":1,"waves":[100]}`))
	}
	if n := len(v.Snapshot().Rollouts); n != maxJobs {
		t.Errorf("rollouts %d, want %d", n, maxJobs)
	}
}
