package fleet

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vitalgate/vitalgate/internal/fleet/physio"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// MaxDevices is the largest fleet one process runs.
const MaxDevices = 10_000

// MQTT protocol choices of [Config.MQTT].
const (
	MQTTMix = 0 // devices alternate: odd-numbered 5, even-numbered 3.1.1
	MQTT3   = 3 // MQTT 3.1.1
	MQTT5   = 5
)

// Config describes a fleet. Start from [Default]: a zero field means its
// default, except QoS, where 0 is QoS 0.
type Config struct {
	PKI          string        `yaml:"pki" json:"pki"`                         // PKI directory (docs/design.md#the-pki-directory)
	Gateway      string        `yaml:"gateway" json:"gateway"`                 // host:port of the gateway's device listener
	Devices      int           `yaml:"devices" json:"devices"`                 // 1..MaxDevices
	Rate         float64       `yaml:"rate" json:"rate"`                       // records per second per device
	Duration     time.Duration `yaml:"duration" json:"duration"`               // how long devices measure; 0: until ctx is done
	MQTT         int           `yaml:"mqtt" json:"mqtt"`                       // 3, 5 or 0 (MQTTMix)
	QoS          byte          `yaml:"qos" json:"qos"`                         // 0 or 1
	Attack       string        `yaml:"attack" json:"attack,omitempty"`         // "" or one of Attacks()
	Attackers    int           `yaml:"attackers" json:"attackers"`             // devices that attack; 0: all
	AttackBudget int           `yaml:"attack_budget" json:"attack_budget"`     // attack messages (rate_limited: rejections) per attacker per minute
	AttackAfter  time.Duration `yaml:"attack_after" json:"attack_after"`       // burst, flap: normal behaviour first, this long (default DefaultAttackAfter)
	FlapEvery    time.Duration `yaml:"flap_every" json:"flap_every"`           // flap: mean time between drops, ±1/3
	Seed         int64         `yaml:"seed" json:"seed"`                       // physiology seed of the fleet
	Ramp         float64       `yaml:"ramp" json:"ramp"`                       // new connections per second across the fleet
	Prefix       string        `yaml:"prefix" json:"prefix"`                   // device ID prefix
	Key          string        `yaml:"key" json:"key"`                         // key type of issued certificates: p256 or ed25519
	Kinds        []string      `yaml:"kinds" json:"kinds"`                     // kinds, round-robin over the devices (repeat one to weight it)
	State        string        `yaml:"state" json:"state"`                     // seq state directory; default PKI/devicesim-state; "-": none
	Buffer       int           `yaml:"buffer" json:"buffer"`                   // records kept per device while the gateway is away
	Window       int           `yaml:"window" json:"window"`                   // QoS 1 messages in flight per device
	Timeout      time.Duration `yaml:"timeout" json:"timeout"`                 // connect (TCP, TLS, CONNACK)
	AckTimeout   time.Duration `yaml:"ack_timeout" json:"ack_timeout"`         // PUBACK; then the device reconnects and resends
	Drain        time.Duration `yaml:"drain" json:"drain"`                     // after Duration: time to send the backlog and collect acks
	Progress     time.Duration `yaml:"progress" json:"progress"`               // interval of progress callbacks
	RevokeSettle time.Duration `yaml:"revoke_settle" json:"revoke_settle"`     // revoked: wait after changing crl.pem, for the gateway to reload it
	Enroll       bool          `yaml:"enroll" json:"enroll,omitempty"`         // start from factory identities, enrol and renew over EST
	EST          string        `yaml:"est" json:"est,omitempty"`               // EST server URL (the gateway's HTTPS listener)
	Updates      bool          `yaml:"updates" json:"updates"`                 // report status at connect and take update commands
	HTTPS        string        `yaml:"https" json:"https,omitempty"`           // host:port of the gateway's HTTPS listener: firmware downloads
	ClockSkew    time.Duration `yaml:"clock_skew" json:"clock_skew,omitempty"` // added to the devices' clocks (ts of their records); may be negative
	Offline      time.Duration `yaml:"offline" json:"offline,omitempty"`       // devices measure this long before their first connection, then send the backlog

	// Logger receives connection problems at debug level; nil discards.
	Logger *slog.Logger `yaml:"-" json:"-"`
}

// Default returns the defaults of docs/design.md#the-shape: 50 devices against a
// local gateway, one record per second each, MQTT 5, QoS 1.
func Default() Config {
	return Config{
		PKI:          "pki",
		Gateway:      "127.0.0.1:8883",
		Devices:      50,
		Rate:         1,
		MQTT:         MQTT5,
		QoS:          1,
		AttackBudget: 10,
		Seed:         1,
		Ramp:         200,
		Prefix:       pki.DefaultDevicePrefix,
		Key:          string(pki.P256),
		Kinds:        physio.Kinds(),
		Buffer:       1000,
		Window:       1,
		Timeout:      10 * time.Second,
		AckTimeout:   15 * time.Second,
		Drain:        5 * time.Second,
		Progress:     250 * time.Millisecond,
		RevokeSettle: 3 * time.Second,
		EST:          "https://127.0.0.1:8443",
		Updates:      true,
		HTTPS:        "127.0.0.1:8443",
		FlapEvery:    3 * time.Second,
	}
}

// withDefaults fills zero fields (but QoS) from Default.
func (c Config) withDefaults() Config {
	d := Default()
	c.PKI = cmp.Or(c.PKI, d.PKI)
	c.Gateway = cmp.Or(c.Gateway, d.Gateway)
	c.Devices = cmp.Or(c.Devices, d.Devices)
	c.Rate = cmp.Or(c.Rate, d.Rate)
	c.AttackBudget = cmp.Or(c.AttackBudget, d.AttackBudget)
	c.Ramp = cmp.Or(c.Ramp, d.Ramp)
	c.Prefix = cmp.Or(c.Prefix, d.Prefix)
	c.Key = cmp.Or(c.Key, d.Key)
	c.Buffer = cmp.Or(c.Buffer, d.Buffer)
	c.Window = cmp.Or(c.Window, d.Window)
	c.Timeout = cmp.Or(c.Timeout, d.Timeout)
	c.AckTimeout = cmp.Or(c.AckTimeout, d.AckTimeout)
	c.Drain = cmp.Or(c.Drain, d.Drain)
	c.Progress = cmp.Or(c.Progress, d.Progress)
	c.RevokeSettle = cmp.Or(c.RevokeSettle, d.RevokeSettle)
	c.EST = cmp.Or(c.EST, d.EST)
	c.HTTPS = cmp.Or(c.HTTPS, d.HTTPS)
	c.FlapEvery = cmp.Or(c.FlapEvery, d.FlapEvery)
	if len(c.Kinds) == 0 {
		c.Kinds = d.Kinds
	}
	c.State = cmp.Or(c.State, filepath.Join(c.PKI, "devicesim-state"))
	if c.Attack != "" && (c.Attackers == 0 || c.Attackers > c.Devices) {
		c.Attackers = c.Devices
	}
	if c.Attack == "" {
		c.Attackers = 0
	}
	if c.AttackAfter == 0 && (c.Attack == AttackBurst || c.Attack == AttackFlap) {
		c.AttackAfter = DefaultAttackAfter
	}
	return c
}

// Validate reports every problem of c (after defaults) at once.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if _, _, err := net.SplitHostPort(c.Gateway); err != nil {
		bad("gateway", "%q is not host:port", c.Gateway)
	}
	if c.Devices < 1 || c.Devices > MaxDevices {
		bad("devices", "%d outside 1..%d", c.Devices, MaxDevices)
	}
	if c.Rate < 0 || c.Rate > 10_000 || math.IsNaN(c.Rate) {
		bad("rate", "%v outside 0..10000 records/s per device", c.Rate)
	}
	if c.Duration < 0 {
		bad("duration", "negative")
	}
	if c.MQTT != MQTTMix && c.MQTT != MQTT3 && c.MQTT != MQTT5 {
		bad("mqtt", "%d: want 3, 5 or 0 (mix)", c.MQTT)
	}
	if c.QoS > 1 {
		bad("qos", "%d: want 0 or 1", c.QoS)
	}
	if !validAttack(c.Attack) {
		bad("attack", "%q: want one of %s", c.Attack, strings.Join(Attacks(), ", "))
	}
	if c.Attackers < 0 {
		bad("attackers", "negative")
	}
	if c.AttackAfter < 0 || c.FlapEvery < 0 {
		bad("attack_after", "negative durations (attack_after, flap_every)")
	}
	if c.AttackBudget < 1 {
		bad("attack_budget", "%d: want at least 1", c.AttackBudget)
	}
	if c.Ramp < 0 {
		bad("ramp", "negative")
	}
	if !pki.ValidDeviceID(c.Prefix + "-revoked-00001") {
		bad("prefix", "%q makes invalid device IDs", c.Prefix)
	}
	if _, err := pki.ParseKeyAlg(c.Key); err != nil {
		bad("key", "%v", err)
	}
	for _, k := range c.Kinds {
		if !slices.Contains(physio.Kinds(), k) {
			bad("kinds", "unknown kind %q", k)
		}
	}
	if c.Enroll {
		if u, err := url.Parse(c.EST); err != nil || u.Scheme != "https" || u.Host == "" {
			bad("est", "%q is not an https://host:port URL", c.EST)
		}
		if c.Attack != "" {
			bad("enroll", "not with attack %q", c.Attack)
		}
	}
	if _, _, err := net.SplitHostPort(c.HTTPS); c.Updates && err != nil {
		bad("https", "%q is not host:port", c.HTTPS)
	}
	if c.Buffer < 1 {
		bad("buffer", "%d: want at least 1", c.Buffer)
	}
	if c.Window < 1 || c.Window > 1000 {
		bad("window", "%d outside 1..1000", c.Window)
	}
	if c.Offline < 0 {
		bad("offline", "negative")
	}
	if c.Timeout < 0 || c.AckTimeout < 0 || c.Drain < 0 || c.Progress < 0 {
		bad("timeout", "negative durations")
	}
	return errors.Join(errs...)
}
