// Package jobs drives the gateway's side of firmware rollouts. An operator
// publishes a rollout job, retained, on the cloud topic jobs/{site}/{job};
// the relay's subscription hands it to [Engine.Handle]. The engine checks
// it (a refused job is a job_refused security event), fetches the image's
// manifest from the firmware store, and keeps a state machine per job and
// device in the data directory:
//
//	pending → sent → downloading → installing → succeeded
//	                                          ↘ failed / rejected / timed_out
//
// It sends devices/{id}/cmd/update to the devices of the current wave
// (again at each connect, until the device reports a final state or the
// deadline passes), takes the devices' status reports ([Engine.Report]),
// advances to the next wave once every device of the waves so far is
// final, aborts when failed and rejected devices pass the job's fraction of
// those attempted (or on an abort message), and relays each device's state
// and a summary, retained, on jobs/{site}/{job}/status/{device} and
// jobs/{site}/{job}/status. [Engine.Allowed] tells the firmware route which
// device may download which image.
package jobs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/vitalgate/vitalgate/internal/jobmsg"
)

// Device states of a job.
const (
	Pending     = jobmsg.Pending
	Sent        = jobmsg.Sent
	Downloading = jobmsg.Downloading
	Installing  = jobmsg.Installing
	Succeeded   = jobmsg.Succeeded
	Failed      = jobmsg.Failed
	Rejected    = jobmsg.Rejected
	TimedOut    = jobmsg.TimedOut
)

// Security events of the engine.
const (
	EventJobRefused     = "job_refused"
	EventUpdateRejected = "update_rejected"
)

// Bounds of what an operator's job may ask for.
const (
	MaxWaves       = jobmsg.MaxWaves
	MaxJobDevices  = jobmsg.MaxDevices
	DefaultMaxJobs = 64
)

// final reports whether a device's state is final for its job.
func final(state string) bool {
	return state == Succeeded || state == Failed || state == Rejected || state == TimedOut
}

// rank orders the progressing states: a report never moves a device back.
var rank = map[string]int{Pending: 0, Sent: 1, Downloading: 2, Installing: 3}

// Job is a rollout as an operator publishes it (docs/updates.md).
type Job = jobmsg.Job

// ParseJob decodes a job message strictly (unknown fields, trailing data
// and a second value are errors) and checks its fields; id is the job ID
// of the topic, which the message must repeat.
func ParseJob(id string, payload []byte) (*Job, error) {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	var j Job
	if err := dec.Decode(&j); err != nil {
		return nil, fmt.Errorf("bad JSON: %v", err)
	}
	if dec.More() {
		return nil, errors.New("bad JSON: data after the job object")
	}
	switch {
	case j.V != 1:
		return nil, fmt.Errorf("v %d: want 1", j.V)
	case j.ID != id:
		return nil, fmt.Errorf("job %q differs from the topic's %q", clip(j.ID), id)
	case j.Abort:
		if j.Model != "" || j.Version != "" || len(j.Devices) > 0 || len(j.Waves) > 0 {
			return nil, errors.New("an abort message carries v, job and abort only")
		}
		return &j, nil
	}
	return &j, j.Check()
}

// same reports whether two rollouts ask for the same thing (a retained job
// arrives again at every reconnect).
func same(j, o *Job) bool {
	a, _ := json.Marshal(j)
	b, _ := json.Marshal(o)
	return bytes.Equal(a, b)
}

// waveSize is the number of devices, of n, in waves 0..w (cumulative).
func waveSize(j *Job, w, n int) int {
	return (j.Waves[w]*n + 99) / 100
}

// clip shortens a peer's string for an event or a log line.
func clip(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}
