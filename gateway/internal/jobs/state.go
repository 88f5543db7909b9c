package jobs

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/vitalgate/vitalgate/internal/atomicfile"
	"github.com/vitalgate/vitalgate/internal/fileerr"
	"github.com/vitalgate/vitalgate/internal/jobmsg"
)

// File is the engine's state file under the gateway's data directory.
const File = "jobs.json"

// device is one device's execution of a job.
type device struct {
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	TS     int64  `json:"ts"` // Unix ms of the last change
	Wave   int    `json:"wave"`
}

// run is one accepted job and its devices.
type run struct {
	Job      Job                `json:"job"`
	Manifest []byte             `json:"manifest"` // the COSE_Sign1 manifest sent to devices
	SHA256   string             `json:"sha256"`   // hex digest of the image
	Order    []string           `json:"order"`    // devices in wave order
	Devices  map[string]*device `json:"devices"`
	Wave     int                `json:"wave"` // index of the wave under way
	Aborted  string             `json:"aborted,omitempty"`
	Done     bool               `json:"done,omitempty"`
}

// state is what survives a restart: the jobs, and the model of each device
// as its status reports said.
type state struct {
	Jobs   map[string]*run   `json:"jobs"`
	Models map[string]string `json:"models"`
}

func newState() *state { return &state{Jobs: map[string]*run{}, Models: map[string]string{}} }

// load reads the state file; a missing file is an empty state.
func load(path string) (*state, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return newState(), nil
	}
	if err != nil {
		return nil, fileerr.Wrap("read jobs", path, err)
	}
	s := newState()
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fileerr.Wrap("read jobs", path, fmt.Errorf("not a jobs state file: %w", err))
	}
	if s.Jobs == nil {
		s.Jobs = map[string]*run{}
	}
	if s.Models == nil {
		s.Models = map[string]string{}
	}
	return s, nil
}

// save replaces path with the state (write, fsync, rename).
func (s *state) save(path string) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return atomicfile.Write("write jobs", path, b, 0o644, true)
}

// DeviceStatus is the retained message on jobs/{site}/{job}/status/{device}.
type DeviceStatus = jobmsg.DeviceStatus

// Summary is the retained message on jobs/{site}/{job}/status.
type Summary = jobmsg.Summary

func (r *run) summary(ts int64) Summary {
	c := map[string]int{}
	for _, d := range r.Devices {
		c[d.State]++
	}
	return Summary{V: 1, Job: r.Job.ID, Model: r.Job.Model, Version: r.Job.Version, Wave: r.Wave + 1, Waves: len(r.Job.Waves),
		Counts: c, Aborted: r.Aborted != "", Reason: r.Aborted, Done: r.Done, TS: ts}
}

// failures are the devices failed or rejected, and attempted those sent
// the command.
func (r *run) failures() (failed, attempted int) {
	for _, d := range r.Devices {
		switch {
		case d.State == Failed || d.State == Rejected:
			failed++
			attempted++
		case d.State != Pending:
			attempted++
		}
	}
	return failed, attempted
}

// waveFinal reports whether every device of the waves so far is final.
func (r *run) waveFinal() bool {
	for _, d := range r.Devices {
		if d.Wave <= r.Wave && !final(d.State) {
			return false
		}
	}
	return true
}
