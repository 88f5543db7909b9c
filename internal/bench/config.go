package bench

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/vitalgate/vitalgate/internal/fleet/physio"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// Config describes one harness run.
type Config struct {
	Devices    int           // fleet of the throughput phases
	Idle       int           // idle connections of the memory phase (0: skip it)
	Duration   time.Duration // of each throughput phase
	Rate       float64       // total messages/s of the latency phase; 0: half the measured peak
	Kinds      []string      // kinds, round-robin over the devices
	Workers    int           // reconnect storm workers
	Storm      time.Duration // of each storm (full, resumed); 0: skip it
	GatewayBin string        // gateway program; "": built with the go tool into the work directory
	BrokerBin  string        // cloud broker program; "": built likewise
	// RelayBin runs the bare mochi relay as `RelayBin bench-relay ...`
	// ([RelayMain]); "": this program.
	RelayBin string
	// MosquittoBin is Mosquitto for its baseline; "": found on the PATH or
	// in /usr/sbin ([FindMosquitto]); "off", or none found: the phase is
	// skipped (with a notice) and its fields are absent.
	MosquittoBin string
	// Key is the devices' key type (pki.P256 or pki.Ed25519; "": P256):
	// ES256 or EdDSA records.
	Key pki.KeyAlg
	// SingleEd25519 turns the gateway's ed25519_batch off: each EdDSA
	// signature checked alone.
	SingleEd25519 bool
	// RelayWindow, when > 0, sets the gateway's relay.window (QoS 1
	// messages in flight to the cloud); 0 keeps the gateway's default.
	RelayWindow int
	Pprof       bool // the gateway serves /debug/pprof/; its address goes to Notice
	// CPUProfile, when set, is a file for the gateway's CPU profile over the
	// peak phase (after its warm-up, to a second before its end); it implies Pprof.
	CPUProfile string
	// GatewayCPUs pins the gateway; CloudCPUs the cloud broker;
	// HarnessCPUs this process (fleet and app). None: not pinned. The
	// verify-only phase runs on the gateway's CPUs, one worker each.
	GatewayCPUs, CloudCPUs, HarnessCPUs CPUSet
	Dir                                 string // work directory (PKI, data); "": a temporary one, removed after
	Seed                                int64
	// Progress, when set, gets a one-line status about four times a second.
	Progress func(line string)
	// Notice, when set, gets lines to keep on screen (the gateway's pprof address).
	Notice func(line string)
}

// Defaults fills zero fields.
func (c Config) Defaults() Config {
	if c.Devices == 0 {
		c.Devices = 2000
	}
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	if len(c.Kinds) == 0 {
		c.Kinds = physio.Kinds()
	}
	if c.Workers == 0 {
		c.Workers = 64
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	return c
}

// Validate reports every bad field at once.
func (c Config) Validate() error {
	var errs []error
	if c.Devices < 1 || c.Devices > 10_000 {
		errs = append(errs, fmt.Errorf("devices: %d outside 1..10000", c.Devices))
	}
	if c.Idle < 0 || c.Idle > 15_000 {
		errs = append(errs, fmt.Errorf("idle: %d outside 0..15000", c.Idle))
	}
	if c.Duration < time.Second || c.Duration > 10*time.Minute {
		errs = append(errs, fmt.Errorf("duration: %v outside 1s..10m", c.Duration))
	}
	if c.Rate < 0 || math.IsNaN(c.Rate) {
		errs = append(errs, fmt.Errorf("rate: %v is negative", c.Rate))
	}
	if c.Workers < 1 || c.Workers > 1000 {
		errs = append(errs, fmt.Errorf("workers: %d outside 1..1000", c.Workers))
	}
	if c.RelayWindow < 0 || c.RelayWindow > 65000 {
		errs = append(errs, fmt.Errorf("relay-window: %d outside 0..65000", c.RelayWindow))
	}
	if c.GatewayCPUs.Overlaps(c.HarnessCPUs) {
		errs = append(errs, fmt.Errorf("gateway CPUs %s and harness CPUs %s overlap", c.GatewayCPUs, c.HarnessCPUs))
	}
	if _, err := pki.ParseKeyAlg(string(c.Key)); err != nil {
		errs = append(errs, fmt.Errorf("key: %v", err))
	}
	if c.Storm < 0 || c.Storm > 5*time.Minute {
		errs = append(errs, fmt.Errorf("storm: %v outside 0..5m", c.Storm))
	}
	for _, k := range c.Kinds {
		if _, err := physio.New(k, 1, nil); err != nil {
			errs = append(errs, fmt.Errorf("kinds: %q: %v", k, err))
		}
	}
	return errors.Join(errs...)
}
