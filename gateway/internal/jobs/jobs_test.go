package jobs_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/fxamacker/cbor/v2"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/gateway/internal/jobs"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

const patience = 20 * time.Second

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// rig is an engine in front of a real mochi server (the device side, its
// inline client sending the commands) with paho devices subscribed to their
// command topics; retained status and events are recorded.
type rig struct {
	t      *testing.T
	dir    string
	srv    *mqtt.Server
	addr   string
	e      *jobs.Engine
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	retained map[string][]byte
	events   []audit.Event
	cmds     map[string][]jobs.Command // device -> commands received
}

const sha = "5f2b5f7f0c4a1b9d2f1e0e7c2d5a3b4c6d7e8f90123456789abcdef012345678"

func newRig(t *testing.T, dir string) *rig {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := mqtt.New(&mqtt.Options{Logger: quiet, InlineClient: true})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddListener(listeners.NewNet("t", ln)); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	r := &rig{t: t, dir: dir, srv: srv, addr: ln.Addr().String(), retained: map[string][]byte{}, cmds: map[string][]jobs.Command{}}
	r.start()
	return r
}

// start (re)creates the engine on the rig's data directory and runs it.
func (r *rig) start() {
	r.t.Helper()
	e, err := jobs.New(jobs.Options{Site: "site1", GatewayID: "gw1", Dir: r.dir, Log: quiet, ResendDelay: 50 * time.Millisecond,
		Fetch: func(_ context.Context, model, version string) (*jobs.Target, error) {
			if model != "pump" || version != "2.0.0" {
				return nil, errors.New("no such target in the repository")
			}
			return &jobs.Target{Manifest: []byte("manifest of pump 2.0.0"), SHA256: sha, Model: "pump"}, nil
		},
		Send: func(topic string, payload []byte) error { return r.srv.Publish(topic, payload, false, 1) },
		Retain: func(topic string, payload []byte) bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.retained[topic] = payload
			return true
		},
		Event: func(ev audit.Event) { r.mu.Lock(); r.events = append(r.events, ev); r.mu.Unlock() },
	})
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.e, r.cancel, r.done = e, cancel, make(chan struct{})
	go func() { defer close(r.done); e.Run(ctx) }()
	r.t.Cleanup(r.stop)
}

func (r *rig) stop() {
	r.cancel()
	<-r.done
}

// device connects a paho device subscribed to its command topic.
func (r *rig) device(id string) paho.Client {
	r.t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + r.addr).SetClientID(id).SetAutoReconnect(false).SetProtocolVersion(4)
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(patience) || tok.Error() != nil {
		r.t.Fatalf("connect %s: %v", id, tok.Error())
	}
	tok := c.Subscribe("devices/"+id+"/cmd/#", 1, func(_ paho.Client, m paho.Message) {
		var cmd jobs.Command
		if err := cbor.Unmarshal(m.Payload(), &cmd); err != nil || m.Topic() != "devices/"+id+"/cmd/update" || m.Qos() != 1 {
			r.t.Errorf("%s: bad command on %s QoS %d: %v", id, m.Topic(), m.Qos(), err)
		}
		r.mu.Lock()
		r.cmds[id] = append(r.cmds[id], cmd)
		r.mu.Unlock()
	})
	if !tok.WaitTimeout(patience) || tok.Error() != nil {
		r.t.Fatalf("subscribe %s: %v", id, tok.Error())
	}
	r.t.Cleanup(func() { c.Disconnect(0) })
	return c
}

func (r *rig) commands(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.cmds[id])
}

func (r *rig) state(job, dev string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var s jobs.DeviceStatus
	_ = json.Unmarshal(r.retained["jobs/site1/"+job+"/status/"+dev], &s)
	return s.State
}

func (r *rig) summary(job string) jobs.Summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	var s jobs.Summary
	_ = json.Unmarshal(r.retained["jobs/site1/"+job+"/status"], &s)
	return s
}

func (r *rig) eventsOf(verdict string) []audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []audit.Event
	for _, e := range r.events {
		if e.Verdict == verdict {
			out = append(out, e)
		}
	}
	return out
}

// fleet connects n pump devices that report their model and version 1.0.0.
func (r *rig) fleet(n int) []string {
	var ids []string
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("pump-%02d", i)
		r.device(id)
		r.e.Report(id, jobs.Report{Model: "pump", FW: "1.0.0"})
		ids = append(ids, id)
	}
	return ids
}

func job(id string, waves string, abort float64, extra string) []byte {
	return []byte(fmt.Sprintf(`{"v":1,"job":%q,"model":"pump","version":"2.0.0","waves":%s,"abort_failures":%v,"deadline":%d%s}`,
		id, waves, abort, time.Now().Add(time.Hour).UnixMilli(), extra))
}

// TestRolloutTwoWaves: 4 devices in waves of 50% and 100%: the second wave
// gets its command only once the first is final; states go through
// sent, downloading, installing, succeeded; the firmware route's Allowed
// follows; a duplicate delivery of the retained job changes nothing.
func TestRolloutTwoWaves(t *testing.T) {
	r := newRig(t, t.TempDir())
	devs := r.fleet(4)
	j := job("r1", "[50,100]", 0.5, "")
	r.e.Handle("jobs/site1/r1", j, true)
	testutil.Eventually(t, patience, "wave 1 commands", func() bool { return r.commands(devs[0]) == 1 && r.commands(devs[1]) == 1 })
	if r.commands(devs[2])+r.commands(devs[3]) != 0 || r.state("r1", devs[2]) != "" {
		t.Fatal("wave 2 started before wave 1 was final")
	}
	if !r.e.Allowed(devs[0], sha) || r.e.Allowed(devs[2], sha) || r.e.Allowed(devs[0], strings.Repeat("0", 64)) {
		t.Error("Allowed: want wave 1 devices for this image only")
	}
	r.e.Handle("jobs/site1/r1", j, true) // redelivered at a reconnect
	for _, d := range devs[:2] {
		for _, st := range []string{jobs.Downloading, jobs.Installing} {
			r.e.Report(d, jobs.Report{Model: "pump", FW: "1.0.0", Job: "r1", State: st})
			if got := r.state("r1", d); got != st {
				t.Fatalf("%s: state %q, want %q", d, got, st)
			}
		}
		r.e.Report(d, jobs.Report{Model: "pump", FW: "1.0.0", Job: "r1", State: jobs.Succeeded})
		if got := r.state("r1", d); got != jobs.Installing {
			t.Fatalf("%s: succeeded at the old version counted: %q", d, got)
		}
		r.e.Report(d, jobs.Report{Model: "pump", FW: "2.0.0"}) // the report at reconnect
	}
	testutil.Eventually(t, patience, "wave 2 commands", func() bool { return r.commands(devs[2]) == 1 && r.commands(devs[3]) == 1 })
	if s := r.summary("r1"); s.Wave != 2 || s.Counts[jobs.Succeeded] != 2 || s.Counts[jobs.Sent] != 2 {
		t.Fatalf("summary %+v", s)
	}
	for _, d := range devs[2:] {
		r.e.Report(d, jobs.Report{Model: "pump", FW: "2.0.0", Job: "r1", State: jobs.Succeeded})
	}
	s := r.summary("r1")
	if !s.Done || s.Aborted || s.Counts[jobs.Succeeded] != 4 || r.e.Allowed(devs[3], sha) {
		t.Fatalf("summary %+v, allowed after success %v", s, r.e.Allowed(devs[3], sha))
	}
	if r.commands(devs[0]) != 1 || len(r.eventsOf(jobs.EventJobRefused)) != 0 {
		t.Errorf("the redelivered job sent again (%d commands) or was refused (%v)", r.commands(devs[0]), r.eventsOf(jobs.EventJobRefused))
	}
}

// TestRolloutAbortsAtThreshold: 10 devices, a first wave of 40% and
// abort_failures 0.25: one failure of 4 is under the threshold, a second
// rejection passes it: the job aborts, the second wave is never sent, the
// rejection is an update_rejected event.
func TestRolloutAbortsAtThreshold(t *testing.T) {
	r := newRig(t, t.TempDir())
	devs := r.fleet(10)
	r.e.Handle("jobs/site1/a1", job("a1", "[40,100]", 0.25, ""), true)
	testutil.Eventually(t, patience, "wave 1 commands", func() bool { return r.commands(devs[3]) == 1 })
	r.e.Report(devs[0], jobs.Report{Model: "pump", FW: "1.0.0", Job: "a1", State: jobs.Failed, Reason: "flash write error"})
	if s := r.summary("a1"); s.Aborted {
		t.Fatalf("aborted at 1 of 4: %+v", s)
	}
	r.e.Report(devs[1], jobs.Report{Model: "pump", FW: "1.0.0", Job: "a1", State: jobs.Rejected, Reason: "rollback"})
	s := r.summary("a1")
	if !s.Aborted || s.Counts[jobs.Failed] != 1 || s.Counts[jobs.Rejected] != 1 {
		t.Fatalf("not aborted at 2 of 4: %+v", s)
	}
	if ev := r.eventsOf(jobs.EventUpdateRejected); len(ev) != 1 || ev[0].Dev != devs[1] || !strings.Contains(ev[0].Detail, "rollback") {
		t.Errorf("update_rejected events %+v", ev)
	}
	if r.e.Allowed(devs[2], sha) {
		t.Error("a device of an aborted job may still download")
	}
	for _, d := range devs[2:4] {
		r.e.Report(d, jobs.Report{Model: "pump", FW: "2.0.0", Job: "a1", State: jobs.Succeeded})
	}
	if s := r.summary("a1"); !s.Done || s.Counts[jobs.Pending] != 6 {
		t.Fatalf("summary after the wave finished %+v", s)
	}
	time.Sleep(100 * time.Millisecond) // nothing to wait for: a command would be a bug
	for _, d := range devs[4:] {
		if n := r.commands(d); n != 0 {
			t.Errorf("%s of the second wave got %d commands after the abort", d, n)
		}
	}
}

// TestRolloutSurvivesRestart: the engine restarted in the middle of a job
// keeps every device's state, sends the waiting device its command when it
// connects again, and finishes the job.
func TestRolloutSurvivesRestart(t *testing.T) {
	r := newRig(t, t.TempDir())
	devs := r.fleet(2)
	r.e.Handle("jobs/site1/s1", job("s1", "[100]", 0.5, ""), true)
	testutil.Eventually(t, patience, "commands", func() bool { return r.commands(devs[1]) == 1 })
	r.e.Report(devs[0], jobs.Report{Model: "pump", FW: "2.0.0", Job: "s1", State: jobs.Succeeded})
	r.stop()
	r.mu.Lock()
	r.retained = map[string][]byte{}
	r.mu.Unlock()
	r.start()
	testutil.Eventually(t, patience, "status published again after the restart", func() bool {
		return r.state("s1", devs[0]) == jobs.Succeeded && r.state("s1", devs[1]) == jobs.Sent
	})
	r.e.Connected(devs[1], nil, "127.0.0.1:1")
	testutil.Eventually(t, patience, "command again at connect", func() bool { return r.commands(devs[1]) == 2 })
	r.e.Connected(devs[0], nil, "127.0.0.1:1")
	r.e.Report(devs[1], jobs.Report{Model: "pump", FW: "2.0.0"})
	if s := r.summary("s1"); !s.Done || s.Counts[jobs.Succeeded] != 2 {
		t.Fatalf("summary %+v", s)
	}
	if r.commands(devs[0]) != 1 {
		t.Errorf("a device done with the job got its command again")
	}
}

// TestJobsRefused: bad JSON, another site, unknown devices, a device of
// another model, an unknown version at the firmware store and bad waves are
// each refused with a job_refused event that says why; nothing is sent.
func TestJobsRefused(t *testing.T) {
	r := newRig(t, t.TempDir())
	devs := r.fleet(2)
	r.e.Report("scale-01", jobs.Report{Model: "scale", FW: "1.0.0"})
	for _, tc := range []struct {
		topic   string
		payload string
		why     string
	}{
		{"jobs/site1/b1", `{"v":1,"job":"b1",`, "bad JSON"},
		{"jobs/site1/b2", `{"v":1,"job":"b2","model":"pump","version":"2.0.0","waves":[100],"deadline":1,"extra":1}`, "unknown field"},
		{"jobs/site2/b3", string(job("b3", "[100]", 0.5, "")), `for site "site2"`},
		{"jobs/site1/b4", string(job("b4", "[100]", 0.5, `,"devices":["pump-01","ghost-7"]`)), "unknown devices: ghost-7"},
		{"jobs/site1/b5", string(job("b5", "[100]", 0.5, `,"devices":["scale-01"]`)), "another model"},
		{"jobs/site1/b6", strings.Replace(string(job("b6", "[100]", 0.5, "")), "2.0.0", "9.9.9", 1), "no such target"},
		{"jobs/site1/b7", string(job("b7", "[60,50]", 0.5, "")), "increasing"},
		{"jobs/site1/b8", string(job("other", "[100]", 0.5, "")), "differs from the topic"},
	} {
		n := len(r.eventsOf(jobs.EventJobRefused))
		r.e.Handle(tc.topic, []byte(tc.payload), true)
		testutil.Eventually(t, patience, "refusal of "+tc.topic, func() bool { return len(r.eventsOf(jobs.EventJobRefused)) > n })
		if ev := r.eventsOf(jobs.EventJobRefused)[n]; !strings.Contains(ev.Detail, tc.why) {
			t.Errorf("%s: event %q, want it to say %q", tc.topic, ev.Detail, tc.why)
		}
	}
	for _, d := range devs {
		if n := r.commands(d); n != 0 {
			t.Errorf("%s got %d commands from refused jobs", d, n)
		}
	}
}
