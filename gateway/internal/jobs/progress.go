package jobs

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/internal/jobmsg"
)

// keepDone is how long a finished job is kept after its deadline.
const keepDone = 7 * 24 * time.Hour

// Report takes a device's status report (the ingest's Status hook, after
// the report was verified like telemetry). It runs on the device's message
// path: it holds the engine's lock for a state change and a file write.
func (e *Engine) Report(dev string, rep Report) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.o.Known == nil && rep.Model != "" && e.st.Models[dev] != rep.Model {
		if _, ok := e.st.Models[dev]; ok || len(e.st.Models) < maxModels {
			e.st.Models[dev] = rep.Model
			defer e.save()
		}
	}
	now := e.o.Now()
	for _, r := range e.st.Jobs {
		d := r.Devices[dev]
		if d == nil || d.State == Pending || final(d.State) || r.Done {
			continue
		}
		if !e.apply(r, dev, d, rep, now) {
			if rep.State == "" && d.State == Sent && r.active(now) {
				e.send(r, dev) // a connect report: the command again
			}
			continue
		}
		e.publishDevice(r, dev)
		e.progress(r)
		e.publishSummary(r)
		e.save()
	}
}

// apply moves a device's state by its report and reports whether it
// changed. A report never moves a device back; "succeeded" counts only
// once the device runs the job's version, which a report at connect
// (without a job state) also shows.
func (e *Engine) apply(r *run, dev string, d *device, rep Report, now time.Time) bool {
	state, reason := rep.State, rep.Reason
	if rep.Job != r.Job.ID {
		state, reason = "", ""
	}
	if rep.FW == r.Job.Version && (state == "" || state == Succeeded) {
		state, reason = Succeeded, ""
	}
	switch state {
	case Downloading, Installing:
		if rank[state] <= rank[d.State] {
			return false
		}
	case Succeeded:
		if rep.FW != r.Job.Version {
			e.o.Log.Warn("device reported success but runs another version: not final until it runs the new one",
				"job", r.Job.ID, "dev", dev, "fw", clip(rep.FW), "want", r.Job.Version)
			return false
		}
	case Failed:
	case Rejected:
		e.o.Event(audit.Event{V: 1, TS: now.UnixMilli(), GW: e.o.GatewayID, Dev: dev, Verdict: EventUpdateRejected,
			Detail: fmt.Sprintf("job %s: the device refused the manifest of %s %s: %s", r.Job.ID, r.Job.Model, r.Job.Version, clip(reason))})
	default:
		return false
	}
	d.State, d.Reason, d.TS = state, clip(reason), now.UnixMilli()
	return true
}

// progress aborts a job past its failure threshold, or starts its next
// wave once the waves so far are final, or ends it.
func (e *Engine) progress(r *run) {
	if r.Done {
		return
	}
	if failed, attempted := r.failures(); r.Aborted == "" && attempted > 0 &&
		float64(failed)/float64(attempted) > r.Job.AbortFailures {
		e.abort(r, fmt.Sprintf("%d of %d attempted devices failed or rejected the update (threshold %v)",
			failed, attempted, r.Job.AbortFailures))
	}
	if !r.waveFinal() {
		return
	}
	if r.Aborted == "" && r.Wave+1 < len(r.Job.Waves) {
		r.Wave++
		e.o.Log.Info("job wave started", "job", r.Job.ID, "wave", r.Wave+1, "of", len(r.Job.Waves))
		e.startWave(r)
		return
	}
	r.Done = true
	e.o.Log.Info("job done", "job", r.Job.ID, "aborted", r.Aborted != "")
}

// abort stops a job: no further wave, no command again; devices already
// updating still report.
func (e *Engine) abort(r *run, why string) {
	r.Aborted = why
	e.o.Log.Warn("job aborted", "job", r.Job.ID, "reason", why)
}

// abortByOperator aborts a job on the operator's abort message.
func (e *Engine) abortByOperator(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.st.Jobs[id]
	if !ok {
		e.o.Log.Info("abort of a job this gateway does not run", "job", id)
		return
	}
	if r.Aborted != "" || r.Done {
		return
	}
	e.abort(r, "aborted by the operator")
	e.progress(r)
	e.publishSummary(r)
	e.save()
}

// tick times out the devices of jobs past their deadline and forgets jobs
// long finished.
func (e *Engine) tick() {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.o.Now()
	changed := false
	for id, r := range e.st.Jobs {
		deadline := time.UnixMilli(r.Job.Deadline)
		if r.Done && now.Sub(deadline) > keepDone {
			delete(e.st.Jobs, id)
			changed = true
			continue
		}
		if r.Done || now.Before(deadline) {
			continue
		}
		for _, dev := range r.Order {
			if d := r.Devices[dev]; !final(d.State) {
				d.State, d.Reason, d.TS = TimedOut, "deadline passed", now.UnixMilli()
				e.publishDevice(r, dev)
			}
		}
		r.Done = true
		e.o.Log.Warn("job deadline passed", "job", id)
		e.publishSummary(r)
		changed = true
	}
	if changed {
		e.save()
	}
}

// publishDevice relays a device's state of a job, retained.
func (e *Engine) publishDevice(r *run, dev string) {
	d := r.Devices[dev]
	b, _ := json.Marshal(DeviceStatus{V: 1, Job: r.Job.ID, Dev: dev, State: d.State, Reason: d.Reason, TS: d.TS})
	e.retain(jobmsg.DeviceTopic(e.o.Site, r.Job.ID, dev), b)
}

// publishSummary relays a job's counts per state, retained.
func (e *Engine) publishSummary(r *run) {
	b, _ := json.Marshal(r.summary(e.o.Now().UnixMilli()))
	e.retain(jobmsg.SummaryTopic(e.o.Site, r.Job.ID), b)
}

func (e *Engine) publishAll(r *run) {
	for _, dev := range r.Order {
		e.publishDevice(r, dev)
	}
	e.publishSummary(r)
}

func (e *Engine) retain(topic string, b []byte) {
	if !e.o.Retain(topic, b) {
		e.o.Log.Warn("job status not relayed: the relay's retained buffer is full", "topic", topic)
	}
}
