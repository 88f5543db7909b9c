package view

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// maxJobs bounds the rollouts the view follows (it shows the latest ones).
const maxJobs = 8

// Final states of a device in a rollout: the wave it is in is done when
// each of its devices is in one of them.
var finalStates = []string{"succeeded", "failed", "rejected", "timed_out"}

// stateOrder is the order states are listed in.
var stateOrder = []string{"pending", "sent", "downloading", "installing", "succeeded", "failed", "rejected", "timed_out"}

// Rollout is the progress of one rollout job as an operator's app sees it
// at the cloud: the job as published on jobs/{site}/{job}, the gateway's
// summary on jobs/{site}/{job}/status and each device's state on
// jobs/{site}/{job}/status/{device} (docs/apps.md).
type Rollout struct {
	Job, Model, Version string
	Waves               []int          // cumulative percentages of the job's devices
	Listed              int            // devices the job names (0: every device of the model)
	Wave                int            // the wave under way, from the summary (1-based; 0: not known yet)
	Aborted             bool           // aborted by the operator or by the failure threshold
	Summary             map[string]int // devices by state, from the summary
	States              map[string]string
}

// jobMsg is what the view reads of a published job.
type jobMsg struct {
	Job     string   `json:"job"`
	Model   string   `json:"model"`
	Version string   `json:"version"`
	Devices []string `json:"devices"`
	Waves   []int    `json:"waves"`
	Abort   bool     `json:"abort"`
}

// deviceStatus is what the view reads of a device's state in a job.
type deviceStatus struct {
	Dev   string `json:"dev"`
	State string `json:"state"`
}

// Job takes one message of the jobs/{site}/# tree: a job, its summary or a
// device's state in it. Anything else is an error and changes nothing.
func (v *View) Job(topic string, payload []byte) error {
	parts := strings.Split(topic, "/")
	if len(parts) < 3 || len(parts) > 5 || parts[0] != "jobs" || parts[2] == "" ||
		(len(parts) >= 4 && parts[3] != "status") {
		return fmt.Errorf("job message on %q: not a jobs/{site}/{job}[/status[/{device}]] topic", topic)
	}
	if len(payload) == 0 {
		return nil // a cleared retained message
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	r := v.rollout(parts[2])
	if r == nil {
		return fmt.Errorf("job %q: the view follows %d rollouts at most", parts[2], maxJobs)
	}
	switch len(parts) {
	case 3:
		var j jobMsg
		if err := json.Unmarshal(payload, &j); err != nil {
			return fmt.Errorf("job %s: %w", parts[2], err)
		}
		if j.Abort {
			r.Aborted = true
			return nil
		}
		r.Model, r.Version, r.Waves, r.Listed = j.Model, j.Version, slices.Clone(j.Waves), len(j.Devices)
	case 4:
		return r.summary(payload)
	case 5:
		var s deviceStatus
		if err := json.Unmarshal(payload, &s); err != nil || s.State == "" {
			return fmt.Errorf("job %s: device status %q: not a status", parts[2], payload)
		}
		if len(r.States) < maxRows || r.States[parts[4]] != "" {
			r.States[parts[4]] = s.State
		}
	}
	return nil
}

// rollout returns the rollout of job, new if need be; nil when the view
// follows maxJobs already.
func (v *View) rollout(job string) *Rollout {
	if r := v.jobs[job]; r != nil {
		return r
	}
	if len(v.jobs) >= maxJobs {
		return nil
	}
	r := &Rollout{Job: job, Summary: map[string]int{}, States: map[string]string{}}
	v.jobs[job] = r
	return r
}

// summary reads the gateway's summary of a job: its counts by state (an
// object "counts", or numbers beside the other fields), the wave under way
// and whether it was aborted.
func (r *Rollout) summary(payload []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(payload, &m); err != nil {
		return fmt.Errorf("job %s: summary: %w", r.Job, err)
	}
	counts := map[string]int{}
	if raw, ok := m["counts"]; ok {
		if err := json.Unmarshal(raw, &counts); err != nil {
			return fmt.Errorf("job %s: summary counts: %w", r.Job, err)
		}
	} else {
		for _, st := range stateOrder {
			var n int
			if raw, ok := m[st]; ok && json.Unmarshal(raw, &n) == nil {
				counts[st] = n
			}
		}
	}
	var wave int
	if raw, ok := m["wave"]; ok && json.Unmarshal(raw, &wave) == nil {
		r.Wave = wave
	}
	var aborted bool
	if raw, ok := m["aborted"]; ok && json.Unmarshal(raw, &aborted) == nil && aborted {
		r.Aborted = true
	}
	r.Summary = counts
	return nil
}

// Counts is the number of devices by state: the devices' own status
// messages when the view has seen any, else the summary's counts.
func (r Rollout) Counts() map[string]int {
	if len(r.States) == 0 {
		return r.Summary
	}
	c := map[string]int{}
	for _, st := range r.States {
		c[st]++
	}
	return c
}

// Devices is the number of devices in the job: those it names, else those
// the gateway counts, else those the view has seen.
func (r Rollout) Devices() int {
	n := 0
	for _, c := range r.Summary {
		n += c
	}
	return max(r.Listed, n, len(r.States))
}

// WaveProgress is one wave of a rollout: its devices, and how many of them
// are final.
type WaveProgress struct {
	Percent     int // cumulative percentage of the job's devices
	Size, Final int
	Started     bool
}

// WaveProgress splits the job's devices into its waves (wave i takes the
// devices up to ceil(n·p_i/100)) and counts the final devices of each: a
// wave starts when the one before it is final, so the final devices fill
// the waves in order.
func (r Rollout) WaveProgress() []WaveProgress {
	n := r.Devices()
	final := 0
	for _, st := range finalStates {
		final += r.Counts()[st]
	}
	var out []WaveProgress
	prev := 0
	for i, p := range r.Waves {
		upto := min((n*p+99)/100, n)
		w := WaveProgress{Percent: p, Size: max(upto-prev, 0)}
		w.Final = min(max(final-prev, 0), w.Size)
		w.Started = r.Wave > i || (i == 0 && r.begun()) || (i > 0 && prev > 0 && final >= prev)
		out = append(out, w)
		prev = max(prev, upto)
	}
	return out
}

// writeRollouts writes each rollout: a line with its target and counts by
// state, then one line per wave with a bar of its final devices.
func writeRollouts(b *strings.Builder, rs []Rollout) {
	for _, r := range rs {
		counts := r.Counts()
		status := fmt.Sprintf("wave %d of %d", r.Wave, len(r.Waves))
		if r.Aborted {
			status = "ABORTED"
		} else if done(r) {
			status = "done"
		}
		fmt.Fprintf(b, "rollout %s: %s to %s, %d devices, %s:", r.Job, orDash(r.Model), orDash(r.Version), r.Devices(), status)
		for _, st := range stateOrder {
			if counts[st] > 0 {
				fmt.Fprintf(b, " %s %d", st, counts[st])
			}
		}
		b.WriteByte('\n')
		for i, w := range r.WaveProgress() {
			const width = 20
			fill := 0
			if w.Size > 0 {
				fill = w.Final * width / w.Size
			}
			state := ""
			switch {
			case w.Size > 0 && w.Final == w.Size:
				state = "final"
			case r.Aborted:
				state = "stopped"
			case !w.Started:
				state = "waiting"
			}
			fmt.Fprintf(b, "  wave %d %3d%%  [%s%s] %d/%d %s\n", i+1, w.Percent,
				strings.Repeat("#", fill), strings.Repeat(".", width-fill), w.Final, w.Size, state)
		}
	}
}

// begun reports whether any device of the rollout left the pending state.
func (r Rollout) begun() bool {
	for st, n := range r.Counts() {
		if st != "pending" && n > 0 {
			return true
		}
	}
	return false
}

// done reports whether every device of the rollout is final.
func done(r Rollout) bool {
	n, final := r.Devices(), 0
	for _, st := range finalStates {
		final += r.Counts()[st]
	}
	return n > 0 && final == n
}

// rollouts copies the rollouts, sorted by job ID.
func (v *View) rollouts() []Rollout {
	var out []Rollout
	for _, r := range v.jobs {
		c := *r
		c.Waves = slices.Clone(r.Waves)
		c.Summary, c.States = map[string]int{}, map[string]string{}
		for k, n := range r.Summary {
			c.Summary[k] = n
		}
		for k, s := range r.States {
			c.States[k] = s
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Job < out[j].Job })
	return out
}
