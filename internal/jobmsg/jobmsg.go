// Package jobmsg holds the messages of firmware rollouts at the cloud
// broker (docs/updates.md#for-operators-rollouts): the job an operator
// publishes, retained, on jobs/{site}/{job}, and the device states and the
// summary a gateway publishes, retained, under jobs/{site}/{job}/status.
// The gateway's job engine, the demo and the simulator's scenarios share
// them.
package jobmsg

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	mqtt3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// Device states of a job.
const (
	Pending     = "pending"
	Sent        = "sent"
	Downloading = "downloading"
	Installing  = "installing"
	Succeeded   = "succeeded"
	Failed      = "failed"
	Rejected    = "rejected"
	TimedOut    = "timed_out"
)

// States lists the device states of a job, in the order a device goes
// through them, the final ones last.
func States() []string {
	return []string{Pending, Sent, Downloading, Installing, Succeeded, Failed, Rejected, TimedOut}
}

// Job is a rollout as an operator publishes it, or an abort of one.
type Job struct {
	V             int      `json:"v"`
	ID            string   `json:"job"`
	Abort         bool     `json:"abort,omitempty"`
	Model         string   `json:"model,omitempty"`
	Version       string   `json:"version,omitempty"`
	Devices       []string `json:"devices,omitempty"`
	Waves         []int    `json:"waves,omitempty"`
	AbortFailures float64  `json:"abort_failures,omitempty"`
	Deadline      int64    `json:"deadline,omitempty"` // Unix ms
}

// Bounds of what an operator's job may ask for.
const (
	MaxWaves        = 10
	MaxDevices      = 10000
	maxVersionBytes = 64
)

// Check validates a rollout's fields (not its devices against the fleet).
func (j *Job) Check() error {
	if !pki.ValidDeviceID(j.Model) {
		return fmt.Errorf("model %q: want [A-Za-z0-9._-]{1,64}", clip(j.Model))
	}
	if j.Version == "" || len(j.Version) > maxVersionBytes || strings.ContainsAny(j.Version, "/+# ") {
		return fmt.Errorf("version %q: want a semantic version", clip(j.Version))
	}
	if len(j.Waves) == 0 || len(j.Waves) > MaxWaves {
		return fmt.Errorf("waves: %d given, want 1..%d cumulative percentages", len(j.Waves), MaxWaves)
	}
	for i, w := range j.Waves {
		if w < 1 || w > 100 || i > 0 && w <= j.Waves[i-1] {
			return fmt.Errorf("waves %v: want increasing percentages in 1..100", j.Waves)
		}
	}
	if j.Waves[len(j.Waves)-1] != 100 {
		return fmt.Errorf("waves %v: the last wave must be 100", j.Waves)
	}
	if j.AbortFailures < 0 || j.AbortFailures > 1 {
		return fmt.Errorf("abort_failures %v: want a fraction in 0..1", j.AbortFailures)
	}
	if j.Deadline <= 0 {
		return errors.New("deadline: required (Unix milliseconds)")
	}
	if len(j.Devices) > MaxDevices {
		return fmt.Errorf("devices: %d given, at most %d", len(j.Devices), MaxDevices)
	}
	for i, d := range j.Devices {
		if !pki.ValidDeviceID(d) {
			return fmt.Errorf("devices[%d] %q: not a device ID", i, clip(d))
		}
		if slices.Contains(j.Devices[:i], d) {
			return fmt.Errorf("devices: %q named twice", d)
		}
	}
	return nil
}

// clip shortens a peer's string for an error.
func clip(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

// DeviceStatus is the retained message on jobs/{site}/{job}/status/{device}.
type DeviceStatus struct {
	V      int    `json:"v"`
	Job    string `json:"job"`
	Dev    string `json:"dev"`
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	TS     int64  `json:"ts"`
}

// Summary is the retained message on jobs/{site}/{job}/status.
type Summary struct {
	V       int            `json:"v"`
	Job     string         `json:"job"`
	Model   string         `json:"model"`
	Version string         `json:"version"`
	Wave    int            `json:"wave"`  // 1-based wave under way
	Waves   int            `json:"waves"` // how many
	Counts  map[string]int `json:"counts"`
	Aborted bool           `json:"aborted"`
	Reason  string         `json:"reason,omitempty"` // why it was aborted
	Done    bool           `json:"done"`
	TS      int64          `json:"ts"`
}

// Topic is where an operator publishes job id of site.
func Topic(site, id string) string { return "jobs/" + site + "/" + id }

// SummaryTopic is where the gateway publishes the job's summary.
func SummaryTopic(site, id string) string { return Topic(site, id) + "/status" }

// DeviceTopic is where the gateway publishes dev's state of the job.
func DeviceTopic(site, id, dev string) string { return SummaryTopic(site, id) + "/" + dev }

// Publish publishes j, retained at QoS 1, with c: a client connected to the
// cloud's app listener with an operator's token for site.
func Publish(c mqtt3.Client, site string, j *Job) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	t := c.Publish(Topic(site, j.ID), 1, true, b)
	if !t.WaitTimeout(10 * time.Second) {
		return fmt.Errorf("publish job %s: no acknowledgement in 10s", j.ID)
	}
	if err := t.Error(); err != nil {
		return fmt.Errorf("publish job %s: %w", j.ID, err)
	}
	return nil
}

// ErrNotSummary is returned by [ParseSummary] for a message that is not a
// job summary.
var ErrNotSummary = errors.New("not a job summary")

// ParseSummary decodes a summary message.
func ParseSummary(b []byte) (*Summary, error) {
	var s Summary
	if err := json.Unmarshal(b, &s); err != nil || s.V != 1 || s.Job == "" {
		return nil, ErrNotSummary
	}
	return &s, nil
}
