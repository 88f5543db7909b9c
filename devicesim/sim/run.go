package sim

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os/exec"
	"sync"
	"time"

	"github.com/vitalgate/vitalgate/internal/fleet"
)

// FleetConfig describes one simulated fleet: the devices, their rate,
// protocol, attack and faults. Start from [DefaultFleet].
type FleetConfig = fleet.Config

// Report is what one fleet did: its configuration and counters.
type Report = fleet.Report

// Stats is a snapshot of a running fleet's counters.
type Stats = fleet.Stats

// Errors of [RunFleet] and [Run] that mean the run could not start, not
// that an expectation failed.
var (
	ErrUnreachable  = fleet.ErrUnreachable  // the gateway accepts no TCP connection
	ErrCertificates = fleet.ErrCertificates // a device certificate or key is missing and cannot be issued
)

// DefaultFleet is 50 devices of every kind at one record per second each,
// MQTT 5, QoS 1, against 127.0.0.1:8883 with the PKI in ./pki.
func DefaultFleet() FleetConfig { return fleet.Default() }

// RunFleet runs one fleet until its Duration and Drain have passed (or ctx
// is done) and reports what it did; progress, when not nil, gets the
// counters while it runs.
func RunFleet(ctx context.Context, cfg FleetConfig, progress func(Stats)) (Report, error) {
	return fleet.Run(ctx, cfg, progress)
}

// Options are the settings of [Run] that do not come from the file: each
// non-zero one overrides the file's.
type Options struct {
	Gateway, PKI, EST, HTTPS string
	Repo                     string // the update repository rollouts publish to
	Seed                     int64
	Cloud                    *Cloud
	// Hooks are the actions a scenario names with `do: [{hook: NAME}]`:
	// what the caller can do to the system under test (stop the cloud
	// broker, restart the gateway).
	Hooks map[string]func(context.Context) error
	// Progress, when not nil, gets each fleet's counters while a phase runs.
	Progress func(phase, fleet string, s Stats)
	// Logger gets the devices' connection problems at debug level.
	Logger *slog.Logger
}

// Result is what a scenario run found.
type Result struct {
	Scenario string
	File     string
	Start    time.Time
	End      time.Time
	Phases   []PhaseResult
}

// PhaseResult is one phase's metrics and checks.
type PhaseResult struct {
	Name    string
	Start   time.Time
	End     time.Time
	Metrics map[string]float64
	Checks  []Check
	Reports []Report // one per fleet
}

// Check is one expectation and what the phase got.
type Check struct {
	Expectation
	Phase string
	Got   float64
	OK    bool
}

// Failed lists the checks that did not hold.
func (r *Result) Failed() []Check {
	var f []Check
	for _, p := range r.Phases {
		for _, c := range p.Checks {
			if !c.OK {
				f = append(f, c)
			}
		}
	}
	return f
}

// Passed reports whether every expectation held.
func (r *Result) Passed() bool { return len(r.Failed()) == 0 }

// Message describes a check: `smoke.yaml:14: phase "steady": acked >= 10: got 3`.
func (c Check) Message(file string) string {
	verb := "got"
	if !c.OK {
		verb = "failed, got"
	}
	return fmt.Sprintf("%s:%d: phase %q: %s: %s %s", file, c.Line, c.Phase, c.Expectation, verb, fmtNum(c.Got))
}

func fmtNum(f float64) string {
	if f == float64(int64(f)) {
		return fmt.Sprintf("%d", int64(f))
	}
	return fmt.Sprintf("%.2f", f)
}

// Run runs the scenario's phases in order and checks each phase's
// expectations. It returns an error (and the phases run so far) when the
// run could not go on: an unreachable gateway ([ErrUnreachable]), missing
// certificates ([ErrCertificates]), a hook that is not provided or fails,
// a cloud it cannot read. A failed expectation is not an error: see
// [Result.Failed].
func Run(ctx context.Context, sc *Scenario, o Options) (*Result, error) {
	s := *sc
	s.Gateway, s.PKI = pick(o.Gateway, s.Gateway, "127.0.0.1:8883"), pick(o.PKI, s.PKI, "pki")
	s.EST, s.HTTPS, s.Repo = pick(o.EST, s.EST, ""), pick(o.HTTPS, s.HTTPS, ""), pick(o.Repo, s.Repo, "")
	if o.Seed != 0 {
		s.Seed = o.Seed
	}
	if o.Cloud != nil {
		s.Cloud = o.Cloud
	}
	res := &Result{Scenario: s.Name, File: s.File, Start: time.Now()}
	defer func() { res.End = time.Now() }()
	if err := checkHooks(&s, o.Hooks); err != nil {
		return res, err
	}
	if err := checkRollouts(&s); err != nil {
		return res, err
	}
	r := &run{sc: &s, o: o, acked: map[string]uint64{}}
	if s.Cloud != nil {
		w, err := watch(s.Cloud, s.PKI, trackedPrefixes(&s), needsEvents(&s), hasRollout(&s))
		if err != nil {
			return res, err
		}
		defer w.close()
		r.w = w
	}
	for _, ph := range s.Phases {
		pr, err := r.phase(ctx, ph)
		res.Phases = append(res.Phases, pr)
		if err != nil {
			// An error of a fleet or an action names its line in the file.
			if fe := (*FileError)(nil); errors.As(err, &fe) {
				return res, &FileError{File: fe.File, Line: fe.Line, Err: fmt.Errorf("phase %q: %w", ph.Name, fe.Err)}
			}
			return res, fmt.Errorf("phase %q: %w", ph.Name, err)
		}
	}
	return res, nil
}

func pick(a, b, c string) string {
	if a != "" {
		return a
	}
	if b != "" {
		return b
	}
	return c
}

func checkHooks(sc *Scenario, hooks map[string]func(context.Context) error) error {
	for _, ph := range sc.Phases {
		for _, a := range ph.Do {
			if a.Hook != "" && hooks[a.Hook] == nil {
				return &FileError{File: sc.File, Line: a.Line, Err: fmt.Errorf("hook %q is not provided by the caller (from the command line, use exec)", a.Hook)}
			}
		}
	}
	return nil
}

// tracked reports whether a fleet's acknowledged records must all reach
// the cloud: with MQTT 3.1.1 a rejected record is acknowledged like an
// accepted one, so a 3.1.1 fleet that attacks or whose clock is off is not
// counted.
func tracked(f Fleet) bool {
	return f.MQTT == "5" || f.MQTT == "" || (f.Attack == "" && f.ClockSkew == 0)
}

func trackedPrefixes(sc *Scenario) map[string]bool {
	m := map[string]bool{}
	for _, ph := range sc.Phases {
		for _, f := range ph.Fleets {
			if tracked(f) {
				m[f.Prefix] = true
			}
		}
	}
	return m
}

func needsEvents(sc *Scenario) bool {
	for _, ph := range sc.Phases {
		for _, e := range ph.Expect {
			if len(e.Metric) > 7 && e.Metric[:7] == "events." {
				return true
			}
		}
	}
	return false
}

// run is one scenario run's state across phases.
type run struct {
	sc    *Scenario
	o     Options
	w     *watcher
	acked map[string]uint64 // records acknowledged so far, by tracked prefix
	// rollout is the last rollout started: the expectations on rollouts
	// are on it.
	rollout *Rollout
}

func (r *run) phase(ctx context.Context, ph Phase) (PhaseResult, error) {
	pr := PhaseResult{Name: ph.Name, Start: time.Now(), Metrics: map[string]float64{}}
	err := r.phaseRun(ctx, ph, &pr)
	pr.End = time.Now()
	return pr, err
}

// phaseRun runs a phase's actions and fleets, waits for the cloud and
// checks the expectations into pr.
func (r *run) phaseRun(ctx context.Context, ph Phase, pr *PhaseResult) error {
	var startDelivered uint64
	if r.w != nil {
		r.w.takeEvents() // what came before belongs to no phase
		startDelivered = r.w.deliveredOf(phasePrefixes(ph))
	}
	for _, a := range ph.Do {
		if err := r.act(ctx, a); err != nil {
			return err
		}
	}
	reports, err := r.fleets(ctx, ph)
	pr.Reports = reports
	if err != nil {
		return err
	}
	var prefixes []string
	for i, f := range ph.Fleets {
		merge(pr.Metrics, fleetMetrics(reports[i]))
		if tracked(f) {
			prefixes = append(prefixes, f.Prefix)
			r.acked[f.Prefix] += reports[i].Stats.Acked
		}
	}
	if r.w != nil {
		all := r.trackedSoFar()
		var want uint64
		for _, p := range all {
			want += r.acked[p]
		}
		settle(ctx, ph.Settle, func() bool { return r.w.deliveredOf(all) >= want && r.rolloutSettled() })
		got := r.w.deliveredOf(all)
		pr.Metrics["delivered"] = float64(r.w.deliveredOf(prefixes) - startDelivered)
		pr.Metrics["lost"] = float64(want - min(got, want))
		for v, n := range r.w.takeEvents() {
			pr.Metrics["events."+v] = float64(n)
		}
		r.rolloutMetrics(pr.Metrics)
	}
	for _, e := range ph.Expect {
		got := pr.Metrics[e.Metric]
		pr.Checks = append(pr.Checks, Check{Expectation: e, Phase: ph.Name, Got: got, OK: e.Holds(got)})
	}
	return ctx.Err()
}

// phasePrefixes lists the prefixes of a phase's tracked fleets.
func phasePrefixes(ph Phase) []string {
	var out []string
	for _, f := range ph.Fleets {
		if tracked(f) {
			out = append(out, f.Prefix)
		}
	}
	return out
}

// trackedSoFar lists the prefixes whose acknowledged records are counted.
func (r *run) trackedSoFar() []string {
	var out []string
	for p := range r.acked {
		out = append(out, p)
	}
	return out
}

func (r *run) act(ctx context.Context, a Action) error {
	if err := r.action(ctx, a); err != nil {
		return &FileError{File: r.sc.File, Line: a.Line, Err: err}
	}
	return nil
}

func (r *run) action(ctx context.Context, a Action) error {
	if a.Rollout != nil {
		return r.startRollout(a.Rollout)
	}
	if a.Hook != "" {
		if err := r.o.Hooks[a.Hook](ctx); err != nil {
			return fmt.Errorf("hook %q: %w", a.Hook, err)
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, a.Exec[0], a.Exec[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("exec %q: %v: %s", a.Exec, err, tail(out))
	}
	return nil
}

func tail(b []byte) string {
	if len(b) > 300 {
		b = b[len(b)-300:]
	}
	return string(b)
}

// fleets runs a phase's fleets side by side.
func (r *run) fleets(ctx context.Context, ph Phase) ([]Report, error) {
	reports := make([]Report, len(ph.Fleets))
	errs := make([]error, len(ph.Fleets))
	var wg sync.WaitGroup
	for i, f := range ph.Fleets {
		cfg := f.config(*r.sc, fleetSeed(r.sc.Seed, f.Name), ph.Duration)
		cfg.Drain, cfg.Logger = ph.Drain, r.o.Logger
		var progress func(Stats)
		if r.o.Progress != nil {
			progress = func(s Stats) { r.o.Progress(ph.Name, f.Name, s) }
		}
		wg.Go(func() { reports[i], errs[i] = fleet.Run(ctx, cfg, progress) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return reports, &FileError{File: r.sc.File, Line: ph.Fleets[i].Line, Err: fmt.Errorf("fleet %q: %w", ph.Fleets[i].Name, err)}
		}
	}
	return reports, errors.Join(errs...)
}

// fleetSeed gives each fleet its own physiology, the same in every phase
// and every run with the same seed.
func fleetSeed(seed int64, name string) int64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return seed ^ int64(h.Sum64()>>1)
}
