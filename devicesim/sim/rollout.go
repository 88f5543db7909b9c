package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/vitalgate/vitalgate/internal/fleet"
	"github.com/vitalgate/vitalgate/internal/fleet/physio"
	"github.com/vitalgate/vitalgate/internal/jobmsg"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/updrepo"
)

// Rollout is a phase action (`do: [{rollout: {...}}]`) that starts a
// firmware rollout the way an operator does (docs/updates.md): it signs a
// test image of Model at Version and adds it to the update repository the
// gateway reads (unless Publish is off), then publishes the job, retained,
// on the cloud's jobs/{site}/{job} with the scenario's operator token.
type Rollout struct {
	Job           string        // job: the job ID (default MODEL-VERSION)
	Model         string        // model, or kind: the model of the simulated devices of that kind
	Version       string        // version: a semantic version
	Seq           uint64        // seq: the manifest's seq (default 1); a device installs only a seq above its own
	Waves         []int         // waves: cumulative percentages, the last 100 (default [100])
	AbortFailures float64       // abort_failures: the fraction of attempted devices that may fail (default 0)
	Deadline      time.Duration // deadline: from the action (default 1h)
	Publish       bool          // publish: publish the image first (default true; needs repo)
}

// RolloutImageBytes is the size of the random image a [Rollout] publishes.
const RolloutImageBytes = 64 << 10

// job is the rollout's job message, its deadline from now.
func (ro *Rollout) job(now time.Time) *jobmsg.Job {
	return &jobmsg.Job{V: 1, ID: ro.Job, Model: ro.Model, Version: ro.Version, Waves: ro.Waves,
		AbortFailures: ro.AbortFailures, Deadline: now.Add(ro.Deadline).UnixMilli()}
}

// RolloutMetrics lists the names an expectation may give under rollout:
// the devices of the phase's rollout in each state (as the gateway's job
// summary at the cloud counts them), devices (all of them), done and
// aborted (1 or 0) and wave (the wave under way, from 1).
func RolloutMetrics() []string {
	return append(jobmsg.States(), "devices", "done", "aborted", "wave")
}

func ints(dst *[]int) func(*yaml.Node) error {
	return func(n *yaml.Node) error {
		if n.Kind != yaml.SequenceNode {
			return errors.New("want a list")
		}
		return n.Decode(dst)
	}
}

// rollout decodes a rollout action and checks it as the gateway checks a
// job.
func (p *parser) rollout(n *yaml.Node) (*Rollout, error) {
	ro := &Rollout{Seq: 1, Deadline: time.Hour, Publish: true, Waves: []int{100}}
	var kind string
	err := p.fields(n, "rollout", map[string]func(*yaml.Node) error{
		"job": str(&ro.Job), "model": str(&ro.Model), "kind": str(&kind), "version": str(&ro.Version),
		"seq": num(&ro.Seq), "waves": ints(&ro.Waves), "abort_failures": num(&ro.AbortFailures),
		"deadline": dur(&ro.Deadline), "publish": boolean(&ro.Publish),
	})
	if err != nil {
		return nil, err
	}
	switch {
	case kind != "" && ro.Model != "":
		return nil, p.errAt(n.Line, "rollout: model or kind, not both")
	case kind != "" && !slices.Contains(physio.Kinds(), kind):
		return nil, p.errAt(n.Line, "rollout: unknown kind %q (kinds: %s)", kind, strings.Join(physio.Kinds(), ", "))
	case kind != "":
		ro.Model = fleet.ModelOf(kind)
	case ro.Model == "":
		return nil, p.errAt(n.Line, "rollout: no model (or kind)")
	}
	if !telemetry.ValidSemver(ro.Version) {
		return nil, p.errAt(n.Line, "rollout: version %q is not a semantic version", ro.Version)
	}
	if ro.Job == "" {
		ro.Job = ro.Model + "-" + ro.Version
	}
	if !pki.ValidDeviceID(ro.Job) {
		return nil, p.errAt(n.Line, "rollout: job %q: want [A-Za-z0-9._-]{1,64}", ro.Job)
	}
	if ro.Seq == 0 || ro.Deadline <= 0 {
		return nil, p.errAt(n.Line, "rollout: seq and deadline must be above 0")
	}
	if err := ro.job(time.Now()).Check(); err != nil {
		return nil, p.errAt(n.Line, "rollout: %v", err)
	}
	return ro, nil
}

// checkRollouts finds the rollouts that cannot run: one that publishes
// without a repository.
func checkRollouts(sc *Scenario) error {
	for _, ph := range sc.Phases {
		for _, a := range ph.Do {
			if a.Rollout != nil && a.Rollout.Publish && sc.Repo == "" {
				return &FileError{File: sc.File, Line: a.Line, Err: errors.New("rollout: publish needs the update repository (repo:, or --repo)")}
			}
		}
	}
	return nil
}

func hasRollout(sc *Scenario) bool {
	for _, ph := range sc.Phases {
		for _, a := range ph.Do {
			if a.Rollout != nil {
				return true
			}
		}
	}
	return false
}

// startRollout publishes the rollout's image and job; the phase's
// expectations are then on it.
func (r *run) startRollout(ro *Rollout) error {
	if ro.Publish {
		if err := updrepo.PublishTestImage(r.sc.PKI, r.sc.Repo, ro.Model, ro.Version, ro.Seq, RolloutImageBytes, time.Now()); err != nil {
			return fmt.Errorf("rollout %s: %w", ro.Job, err)
		}
	}
	if err := jobmsg.Publish(r.w.c, r.sc.Cloud.Site, ro.job(time.Now())); err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	r.rollout = ro
	return nil
}

// rolloutSettled reports whether the cloud has the end of the current
// rollout: its summary done, and the inventory showing every device that
// succeeded at the new version.
func (r *run) rolloutSettled() bool {
	if r.rollout == nil {
		return true
	}
	s := r.w.summary(r.rollout.Job)
	return s != nil && s.Done && r.w.updated(r.rollout.Model, r.rollout.Version) >= s.Counts[jobmsg.Succeeded]
}

// rolloutMetrics adds the current rollout's metrics to m.
func (r *run) rolloutMetrics(m map[string]float64) {
	if r.rollout == nil {
		return
	}
	s := r.w.summary(r.rollout.Job)
	if s == nil {
		s = &jobmsg.Summary{}
	}
	total := 0
	for _, st := range jobmsg.States() {
		m["rollout."+st] = float64(s.Counts[st])
		total += s.Counts[st]
	}
	m["rollout.devices"], m["rollout.wave"] = float64(total), float64(s.Wave)
	m["rollout.done"], m["rollout.aborted"] = b2f(s.Done), b2f(s.Aborted)
	m["updated"] = float64(r.w.updated(r.rollout.Model, r.rollout.Version))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// rolloutTopics are the watcher's subscriptions for rollouts: the jobs'
// summaries and the devices' inventory entries (model and firmware).
func rolloutTopics(site string) []string {
	return []string{jobmsg.SummaryTopic(site, "+"), "inventory/" + site + "/+"}
}

// handleRollout takes a job summary or an inventory entry.
func (w *watcher) handleRollout(topic string, b []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(b) == 0 {
		return // a retained message cleared
	}
	if strings.HasPrefix(topic, "jobs/") {
		s, err := jobmsg.ParseSummary(b)
		if err != nil {
			w.badMsgs++
			return
		}
		w.jobs[s.Job] = s
		return
	}
	var e struct {
		Dev   string `json:"dev"`
		Model string `json:"model"`
		FW    string `json:"fw"`
	}
	if json.Unmarshal(b, &e) != nil || e.Dev == "" {
		w.badMsgs++
		return
	}
	w.firmware[e.Dev] = [2]string{e.Model, e.FW}
}

// summary is the latest summary of job at the cloud, nil before the first.
func (w *watcher) summary(job string) *jobmsg.Summary {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.jobs[job]
}

// updated counts the devices of model whose inventory entry at the cloud
// shows version.
func (w *watcher) updated(model, version string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, mf := range w.firmware {
		if mf == [2]string{model, version} {
			n++
		}
	}
	return n
}
