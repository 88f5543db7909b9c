package jobs

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// Target is what the firmware store gives for a model and version: the
// signed manifest the devices get, and the image's digest (what the
// firmware route serves it under).
type Target struct {
	Manifest []byte // COSE_Sign1
	SHA256   string // hex
	Model    string // the manifest's model
}

// Options wires the engine to the gateway.
type Options struct {
	Site, GatewayID string
	// Dir is the data directory; the state is Dir/jobs.json.
	Dir string
	// Fetch gets a job's image from the firmware store (verified); it may
	// take a while (a download), and runs on the engine's goroutine.
	Fetch func(ctx context.Context, model, version string) (*Target, error)
	// Send publishes a command to a device, QoS 1 (the device-side
	// server's inline client).
	Send func(topic string, payload []byte) error
	// Retain publishes a retained message at the cloud (the relay's Retain).
	Retain func(topic string, payload []byte) bool
	// Event receives the security events.
	Event func(audit.Event)
	// Known gives a device's model; nil means the models the devices'
	// status reports gave (kept in the state file).
	Known func(dev string) (model string, ok bool)
	// Fleet lists the known devices of a model, for a job that names
	// none; nil means the devices of status reports.
	Fleet func(model string) []string
	// MaxJobs bounds the jobs not yet done; default DefaultMaxJobs.
	MaxJobs int
	// ResendDelay is how long after a device connects the engine sends its
	// command again (time to subscribe); default 1 s.
	ResendDelay time.Duration
	Log         *slog.Logger
	Now         func() time.Time
}

// maxModels bounds the devices whose model the engine remembers itself.
const maxModels = 100000

// Engine runs the jobs. Create it with [New], feed it with [Engine.Handle]
// and [Engine.Report], run it with [Engine.Run].
type Engine struct {
	o    Options
	path string
	enc  cbor.EncMode
	in   chan message

	mu sync.Mutex
	st *state
}

type message struct {
	topic   string
	payload []byte
}

// Report is a device's status report, as far as jobs are concerned.
type Report struct {
	Model, FW  string
	Job, State string
	Reason     string
}

// New loads the state from o.Dir.
func New(o Options) (*Engine, error) {
	if o.Fetch == nil || o.Send == nil || o.Retain == nil {
		return nil, errors.New("jobs: Fetch, Send and Retain are required")
	}
	if o.MaxJobs <= 0 {
		o.MaxJobs = DefaultMaxJobs
	}
	if o.ResendDelay <= 0 {
		o.ResendDelay = time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Event == nil {
		o.Event = func(audit.Event) {}
	}
	path := filepath.Join(o.Dir, File)
	st, err := load(path)
	if err != nil {
		return nil, err
	}
	enc, err := cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		return nil, err
	}
	return &Engine{o: o, path: path, enc: enc, st: st, in: make(chan message, 256)}, nil
}

// Handle takes a message of the cloud subscription jobs/{site}/+ (the
// relay's handler: it never blocks). A full inbox drops the message: a
// retained job comes again at the next connection.
func (e *Engine) Handle(topic string, payload []byte, _ bool) {
	select {
	case e.in <- message{topic: topic, payload: slices.Clone(payload)}:
	default:
		e.o.Log.Warn("job message dropped: the engine is behind", "topic", clip(topic))
	}
}

// Run processes job messages and deadlines until ctx is done. It first
// publishes every job's status again (retained messages waiting at the
// relay do not survive a restart).
func (e *Engine) Run(ctx context.Context) {
	e.mu.Lock()
	for _, r := range e.st.Jobs {
		e.publishAll(r)
	}
	e.mu.Unlock()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-e.in:
			e.accept(ctx, m)
		case <-tick.C:
			e.tick()
		}
	}
}

// refuse reports a refused job: a job_refused security event and a log line.
func (e *Engine) refuse(id, why string) {
	e.o.Log.Warn("job refused", "job", clip(id), "reason", why)
	e.o.Event(audit.Event{V: 1, TS: e.o.Now().UnixMilli(), GW: e.o.GatewayID, Verdict: EventJobRefused,
		Detail: "job " + clip(id) + ": " + why})
}

// accept checks one job message and starts, aborts or refuses the job.
func (e *Engine) accept(ctx context.Context, m message) {
	lv := strings.Split(m.topic, "/")
	if len(lv) != 3 || lv[0] != "jobs" {
		e.refuse(m.topic, "not a job topic")
		return
	}
	id := lv[2]
	if lv[1] != e.o.Site {
		e.refuse(id, fmt.Sprintf("for site %q, this gateway serves %q", clip(lv[1]), e.o.Site))
		return
	}
	if len(m.payload) == 0 {
		return // a retained job cleared
	}
	j, err := ParseJob(id, m.payload)
	if err != nil {
		e.refuse(id, err.Error())
		return
	}
	if j.Abort {
		e.abortByOperator(id)
		return
	}
	devs, why := e.admit(j)
	if why != "" {
		if why != "same" {
			e.refuse(id, why)
		}
		return
	}
	fctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	t, err := e.o.Fetch(fctx, j.Model, j.Version)
	cancel()
	switch {
	case err != nil:
		e.refuse(id, fmt.Sprintf("firmware %s %s: %v", j.Model, clip(j.Version), err))
		return
	case t.Model != j.Model:
		e.refuse(id, fmt.Sprintf("the manifest of %s %s is for model %q", j.Model, clip(j.Version), clip(t.Model)))
		return
	}
	e.start(j, t, devs)
}

// admit checks a job against the jobs and devices the gateway knows and
// returns its devices, or why it is refused ("same" for a job it runs
// already, which a reconnect delivers again).
func (e *Engine) admit(j *Job) ([]string, string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if r, ok := e.st.Jobs[j.ID]; ok {
		if same(&r.Job, j) {
			return nil, "same"
		}
		return nil, "the job ID is taken by a different job (publish a new job ID)"
	}
	if !time.UnixMilli(j.Deadline).After(e.o.Now()) {
		return nil, "deadline already passed"
	}
	active := 0
	for _, r := range e.st.Jobs {
		if !r.Done {
			active++
		}
	}
	if active >= e.o.MaxJobs {
		return nil, fmt.Sprintf("%d jobs under way, the most allowed", active)
	}
	if len(j.Devices) == 0 {
		devs := e.fleet(j.Model)
		if len(devs) == 0 {
			return nil, fmt.Sprintf("no known device of model %s", j.Model)
		}
		return devs, ""
	}
	var unknown, other []string
	for _, d := range j.Devices {
		model, ok := e.model(d)
		switch {
		case !ok:
			unknown = append(unknown, d)
		case model != j.Model:
			other = append(other, d+" ("+model+")")
		}
	}
	if len(unknown) > 0 {
		return nil, fmt.Sprintf("unknown devices: %s", list(unknown))
	}
	if len(other) > 0 {
		return nil, fmt.Sprintf("devices of another model than %s: %s", j.Model, list(other))
	}
	return j.Devices, ""
}

// list names up to 10 devices.
func list(devs []string) string {
	if len(devs) > 10 {
		return strings.Join(devs[:10], ", ") + fmt.Sprintf(" and %d more", len(devs)-10)
	}
	return strings.Join(devs, ", ")
}

func (e *Engine) model(dev string) (string, bool) {
	if e.o.Known != nil {
		return e.o.Known(dev)
	}
	m, ok := e.st.Models[dev]
	return m, ok
}

func (e *Engine) fleet(model string) []string {
	if e.o.Fleet != nil {
		return e.o.Fleet(model)
	}
	var out []string
	for d, m := range e.st.Models {
		if m == model {
			out = append(out, d)
		}
	}
	slices.Sort(out)
	return out
}

// start records an accepted job and sends its first wave.
func (e *Engine) start(j *Job, t *Target, devs []string) {
	r := &run{Job: *j, Manifest: t.Manifest, SHA256: t.SHA256, Order: devs, Devices: map[string]*device{}}
	now := e.o.Now().UnixMilli()
	w := 0
	for i, d := range devs {
		for i >= waveSize(j, w, len(devs)) {
			w++
		}
		r.Devices[d] = &device{State: Pending, TS: now, Wave: w}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.st.Jobs[j.ID] = r
	e.o.Log.Info("job started", "job", j.ID, "model", j.Model, "version", j.Version, "devices", len(devs), "waves", j.Waves)
	e.startWave(r)
	e.publishSummary(r)
	e.save()
}

// startWave sends the command to the pending devices of the current wave.
func (e *Engine) startWave(r *run) {
	now := e.o.Now().UnixMilli()
	for _, d := range r.Order {
		x := r.Devices[d]
		if x.Wave == r.Wave && x.State == Pending {
			x.State, x.TS = Sent, now
			e.send(r, d)
			e.publishDevice(r, d)
		}
	}
}

// Command is the payload of devices/{id}/cmd/update (CBOR).
type Command struct {
	V        int    `cbor:"v"`
	Job      string `cbor:"job"`
	Manifest []byte `cbor:"manifest"`
	URL      string `cbor:"url"`
}

// send publishes a device's command.
func (e *Engine) send(r *run, dev string) {
	b, err := e.enc.Marshal(Command{V: 1, Job: r.Job.ID, Manifest: r.Manifest, URL: "/firmware/" + r.SHA256})
	if err == nil {
		err = e.o.Send("devices/"+dev+"/cmd/update", b)
	}
	if err != nil {
		e.o.Log.Warn("update command not sent", "job", r.Job.ID, "dev", dev, "error", err)
	}
}

// save writes the state; a failure is logged (the state in memory goes on).
func (e *Engine) save() {
	if err := e.st.save(e.path); err != nil {
		e.o.Log.Error("jobs state not saved: a restart would lose the latest job progress", "error", err)
	}
}

// Connected sends a device its pending commands again once it had time to
// subscribe ([ingest.Observer]).
func (e *Engine) Connected(dev string, _ *x509.Certificate, _ string) {
	time.AfterFunc(e.o.ResendDelay, func() { e.resend(dev) })
}

// Disconnected is part of [ingest.Observer].
func (e *Engine) Disconnected(string, *x509.Certificate, string) {}

// Verdict is part of [ingest.Observer].
func (e *Engine) Verdict(string, verdict.Verdict) {}

// resend sends dev the command of each job under way that it has not
// answered yet.
func (e *Engine) resend(dev string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.o.Now()
	for _, r := range e.st.Jobs {
		if d := r.Devices[dev]; d != nil && d.State == Sent && r.active(now) {
			e.send(r, dev)
		}
	}
}

// active: not done, not aborted, before the deadline.
func (r *run) active(now time.Time) bool {
	return !r.Done && r.Aborted == "" && now.Before(time.UnixMilli(r.Job.Deadline))
}

// Allowed reports whether dev may download the image sha256hex now: a job
// under way sent it the command and it has not reached a final state.
func (e *Engine) Allowed(dev, sha256hex string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.o.Now()
	for _, r := range e.st.Jobs {
		if r.SHA256 != sha256hex || !r.active(now) {
			continue
		}
		if d := r.Devices[dev]; d != nil && d.State != Pending && !final(d.State) {
			return true
		}
	}
	return false
}
