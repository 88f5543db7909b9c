// Package config is the gateway's configuration: one YAML file whose keys
// match the command-line flags, defaults that run on a laptop, and a
// validation that reports every problem at once.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/vitalgate/vitalgate/gateway/internal/clocktrust"
	"github.com/vitalgate/vitalgate/gateway/internal/inventory"
	"github.com/vitalgate/vitalgate/internal/envelope"
)

// Config is everything the gateway can be told.
type Config struct {
	PKI    string  `yaml:"pki"`    // PKI directory as `certs init` writes it
	Listen string  `yaml:"listen"` // device listener (MQTT over mTLS)
	Cloud  URLList `yaml:"cloud"`  // cloud broker URLs, in failover order; empty: embedded broker
	Data   string  `yaml:"data"`   // queue, audit log and embedded broker state
	HTTP   string  `yaml:"http"`   // /metrics, /healthz, /readyz; "" disables
	HTTPS  string  `yaml:"https"`  // EST enrolment (RFC 7030) with the gateway's TLS certificate; "" disables
	Pprof  bool    `yaml:"pprof"`  // also /debug/pprof/ on the http address
	Site   string  `yaml:"site"`   // default: OU of gateway-client.crt
	ID     string  `yaml:"id"`     // default: CN of gateway-client.crt
	Format string  `yaml:"format"` // cloud payload: cbor or json
	Log    string  `yaml:"log"`    // debug, info, warn, error

	MaxPayload       int           `yaml:"max_payload"`       // largest COSE message accepted (bytes)
	MaxPacket        int           `yaml:"max_packet"`        // largest MQTT packet read (bytes); above max_payload
	MaxConnections   int           `yaml:"max_connections"`   // concurrent device connections
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"` // TLS handshake and CONNECT must finish within it
	AcceptRate       float64       `yaml:"accept_rate"`       // new TLS handshakes per second (admission control)
	MaxInflight      int           `yaml:"max_inflight"`      // QoS 1 messages a device may have unacknowledged
	Curves           []string      `yaml:"curves"`            // TLS key exchange preference; empty: Go's default (hybrid PQ first)
	MaxAge           time.Duration `yaml:"max_age"`           // oldest ts accepted
	MaxSeqJump       uint64        `yaml:"max_seq_jump"`      // farthest a device's seq may advance in one record
	Schemas          string        `yaml:"schemas"`           // schema file; empty: built-in
	// Ed25519Batch checks devices' EdDSA signatures in batches across
	// devices (package batchverify); the verdicts are the same without.
	Ed25519Batch bool `yaml:"ed25519_batch"`

	Rate       RateConfig  `yaml:"rate"`
	Quarantine Quarantine  `yaml:"quarantine"`
	Queue      QueueConfig `yaml:"queue"`
	Relay      RelayConfig `yaml:"relay"`
	Embedded   Embedded    `yaml:"embedded"`
	Audit      AuditConfig `yaml:"audit"`
	Enroll     Enroll      `yaml:"enroll"`
	Anomaly    Anomaly     `yaml:"anomaly"`
	Updates    Updates     `yaml:"updates"`
	Inventory  Inventory   `yaml:"inventory"`
	Clock      Clock       `yaml:"clock"`
	// MinFirmware is the minimum firmware (a semantic version) per device
	// model: a device below it is a finding and an event, and its cloud
	// messages are marked fw_below_min.
	MinFirmware map[string]string `yaml:"min_firmware"`

	// ResetQueue (--reset-queue, never from the file: it is one start's
	// decision) moves a queue that is refused as corrupt or lost aside and
	// starts an empty one.
	ResetQueue bool `yaml:"-"`
}

// Embedded configures the cloud broker the gateway starts in-process when no
// cloud URL is given: where clinicians' apps connect (JWT over TLS, and
// WebSocket), and the clinician web view (HTTPS; it needs WS). Empty
// addresses turn a listener off.
type Embedded struct {
	Apps string `yaml:"apps"`
	WS   string `yaml:"ws"`
	Web  string `yaml:"web"`
}

// Anomaly configures the behaviour baselines: per device, messages per
// minute, reconnects per hour and the share of rejected messages, learned
// over windows; a figure above max(factor × baseline, baseline + deviations
// × deviation, floor) after the warm-up is reported, never blocked.
type Anomaly struct {
	Enabled    bool          `yaml:"enabled"`
	Window     time.Duration `yaml:"window"`      // one figure per window
	Warmup     time.Duration `yaml:"warmup"`      // history before a device is judged
	Factor     float64       `yaml:"factor"`      // times the baseline
	Deviations float64       `yaml:"deviations"`  // deviations above the baseline
	MaxDevices int           `yaml:"max_devices"` // devices tracked at once
	// Floors: the lowest thresholds.
	MessagesFloor   float64 `yaml:"messages_floor"`   // messages per minute
	ReconnectsFloor float64 `yaml:"reconnects_floor"` // reconnects per hour
	RejectedFloor   float64 `yaml:"rejected_floor"`   // share of rejected messages, 0..1
}

// Updates configures the firmware updates: the update repository the gateway
// fetches from as a TUF client (trusting tuf-root.json and update-signing.pub
// of the PKI directory), its cache under the data directory, and how often
// it refreshes the repository's metadata.
type Updates struct {
	URL        string        `yaml:"url"`         // base URL: metadata under URL/metadata/, targets under URL/targets/; "": updates off
	CacheBytes int64         `yaml:"cache_bytes"` // images kept in data/firmware at most (least recently used evicted)
	Refresh    time.Duration `yaml:"refresh"`     // between two refreshes of the TUF metadata
}

// Clock says when the gateway's clock is trusted to judge records' time
// (package clocktrust): while it is not, records are stored unjudged and
// marked clock_untrusted.
type Clock struct {
	// RequireSync: auto (the kernel's NTP state counts where known), true
	// (only a synchronised clock is trusted) or false (the floor alone).
	RequireSync string        `yaml:"require_sync"`
	MaxAhead    time.Duration `yaml:"max_ahead"` // how far past its floor an unsynchronised clock is believed
}

// Inventory bounds the device inventory.
type Inventory struct {
	MaxDevices int `yaml:"max_devices"` // devices kept at most
}

// Enroll configures enrolment over EST on the https address: the lifetime of the operational certificates the
// issuing CA signs, and each client's request rate.
type Enroll struct {
	Validity time.Duration `yaml:"validity"` // of an operational certificate (never beyond the issuing CA)
	Rate     float64       `yaml:"rate"`     // EST requests per second per client
	Burst    int           `yaml:"burst"`    // EST requests a client may make at once
}

// RateConfig bounds each device's traffic.
type RateConfig struct {
	Messages  float64 `yaml:"messages"` // per second
	Burst     int     `yaml:"burst"`    // messages
	Bytes     float64 `yaml:"bytes"`    // per second
	ByteBurst int     `yaml:"byte_burst"`
}

// Quarantine is how many violations within a window shut a device out, and for how long.
type Quarantine struct {
	Violations int           `yaml:"violations"`
	Window     time.Duration `yaml:"window"`
	Cooloff    time.Duration `yaml:"cooloff"`
}

// QueueConfig bounds the store-and-forward queue on disk.
type QueueConfig struct {
	MaxRecords int   `yaml:"max_records"`
	MaxBytes   int64 `yaml:"max_bytes"`
	// CommitDelay: while messages arrive concurrently, how long a commit
	// waits for more to share its fsyncs (0: never waits).
	CommitDelay time.Duration `yaml:"commit_delay"`
}

// RelayConfig tunes the cloud relay.
type RelayConfig struct {
	Window int `yaml:"window"` // QoS 1 messages in flight to the cloud
}

// AuditConfig tunes the posture audit: how often the running gateway
// audits, and the thresholds of its checks of live devices.
type AuditConfig struct {
	Interval      time.Duration `yaml:"interval"`       // between two audits of the running gateway
	SilenceFactor float64       `yaml:"silence_factor"` // silent after this many median gaps...
	SilenceMin    time.Duration `yaml:"silence_min"`    // ...and at least this long
	Window        time.Duration `yaml:"window"`         // clones and takeover storms are judged over it
	Takeovers     int           `yaml:"takeovers"`      // takeovers of one client ID within window that make a storm
	MaxDevices    int           `yaml:"max_devices"`    // devices tracked at most
}

// Default returns a configuration that runs on a laptop.
func Default() Config {
	return Config{
		PKI:              "pki",
		Listen:           "127.0.0.1:8883",
		Data:             "data",
		HTTP:             "127.0.0.1:9100",
		HTTPS:            "127.0.0.1:8443",
		Format:           "cbor",
		Log:              "info",
		MaxPayload:       64 << 10,
		MaxPacket:        72 << 10,
		MaxConnections:   20000,
		HandshakeTimeout: 10 * time.Second,
		AcceptRate:       1000,
		MaxInflight:      64,
		MaxAge:           7 * 24 * time.Hour,
		MaxSeqJump:       1 << 32, // spool.DefaultMaxSeqJump
		Ed25519Batch:     true,
		Rate:             RateConfig{Messages: 20, Burst: 200, Bytes: 256 << 10, ByteBurst: 4 << 20},
		Quarantine:       Quarantine{Violations: 20, Window: time.Minute, Cooloff: 10 * time.Minute},
		Queue:            QueueConfig{MaxRecords: 1_000_000, MaxBytes: 1 << 30, CommitDelay: time.Millisecond},
		Relay:            RelayConfig{Window: 4096}, // relay.DefaultWindow
		Embedded:         Embedded{Apps: "127.0.0.1:8884"},
		Audit: AuditConfig{Interval: time.Minute, SilenceFactor: 3, SilenceMin: 5 * time.Minute,
			Window: 10 * time.Minute, Takeovers: 10, MaxDevices: 50000},
		Enroll:  Enroll{Validity: 30 * 24 * time.Hour, Rate: 1, Burst: 10}, // pki.OperationalValidity
		Updates: Updates{CacheBytes: 1 << 30, Refresh: 5 * time.Minute},
		Anomaly: Anomaly{Enabled: true, Window: time.Minute, Warmup: 10 * time.Minute, Factor: 3, Deviations: 6,
			MaxDevices: 20000, MessagesFloor: 10, ReconnectsFloor: 60, RejectedFloor: 0.1},
		Inventory: Inventory{MaxDevices: 50000},                           // inventory.DefaultMaxDevices
		Clock:     Clock{RequireSync: "auto", MaxAhead: 8784 * time.Hour}, // clocktrust.DefaultMaxAhead
	}
}

// URLList is a list of URLs. In YAML it is a sequence, or one string of
// URLs separated by commas (as the --cloud flag takes them).
type URLList []string

// UnmarshalYAML takes a sequence of strings or one string.
func (l *URLList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*l = nil
		for _, u := range strings.Split(n.Value, ",") {
			if u = strings.TrimSpace(u); u != "" {
				*l = append(*l, u)
			}
		}
		return nil
	}
	var s []string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: a list of URLs, or one string of URLs separated by commas", n.Line)
	}
	*l = s
	return nil
}

// CloudSchemes are the URL schemes of Cloud the relay dials: tcp and mqtt
// are plain TCP, ssl, tls and mqtts are TLS.
var CloudSchemes = []string{"tcp", "mqtt", "ssl", "tls", "mqtts"}

// MinSeqJump is the smallest max_seq_jump: a device's seq has gaps (records
// refused, QoS 0 lost, numbers reserved in blocks across reboots).
const MinSeqJump = 1 << 16

// Curve names accepted in Curves.
var CurveNames = []string{"X25519MLKEM768", "X25519", "P256", "P384", "P521"}

// Validate reports every problem at once, each naming its key.
func (c Config) Validate() error {
	var p problems
	c.validateFiles(&p)
	c.validateAddresses(&p)
	c.validateLimits(&p)
	c.validateGuards(&p)
	c.validateUpdates(&p)
	return errors.Join(p...)
}

// validateUpdates checks updates.*: an https URL (the repository is fetched with the gateway's client
// certificate), a cache of at least 1 MiB, a refresh between a second and a day.
func (c Config) validateUpdates(p *problems) {
	u := c.Updates
	if u.URL != "" {
		if pu, err := url.Parse(u.URL); err != nil || pu.Scheme != "https" || pu.Host == "" {
			p.bad("updates.url", "%q is not an https://host[:port][/path] URL", u.URL)
		}
	}
	if u.CacheBytes < 1<<20 {
		p.bad("updates.cache_bytes", "%d is under 1 MiB", u.CacheBytes)
	}
	if u.Refresh < time.Second || u.Refresh > 24*time.Hour {
		p.bad("updates.refresh", "%v outside 1s..24h", u.Refresh)
	}
}

// problems collects what Validate finds, each naming its key.
type problems []error

func (p *problems) bad(key, format string, args ...any) {
	*p = append(*p, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
}

func (c Config) validateFiles(p *problems) {
	if c.PKI == "" {
		p.bad("pki", "required")
	}
	if c.Data == "" {
		p.bad("data", "required")
	}
	if c.Schemas != "" {
		if _, err := os.Stat(c.Schemas); err != nil {
			p.bad("schemas", "%v", err)
		}
	}
	if c.Format != "cbor" && c.Format != "json" {
		p.bad("format", "%q is not cbor or json", c.Format)
	}
	switch c.Log {
	case "debug", "info", "warn", "error":
	default:
		p.bad("log", "%q is not debug, info, warn or error", c.Log)
	}
}

func (c Config) validateAddresses(p *problems) {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		p.bad("listen", "%q is not host:port", c.Listen)
	}
	if c.Pprof {
		// Profiles and traces are unauthenticated and cost CPU for as long as
		// the caller asks: never on an address others can reach.
		if host, _, err := net.SplitHostPort(c.HTTP); c.HTTP == "" || err != nil || !isLoopback(host) {
			p.bad("pprof", "needs http on a loopback address (127.0.0.1, ::1 or localhost), not %q", c.HTTP)
		}
	}
	if c.HTTP != "" {
		if _, _, err := net.SplitHostPort(c.HTTP); err != nil {
			p.bad("http", "%q is not host:port", c.HTTP)
		}
	}
	if c.HTTPS != "" {
		if _, _, err := net.SplitHostPort(c.HTTPS); err != nil {
			p.bad("https", "%q is not host:port", c.HTTPS)
		}
	}
	for _, u := range c.Cloud {
		pu, err := url.Parse(u)
		switch {
		case err != nil:
			p.bad("cloud", "%q: %v", u, err)
		case !slices.Contains(CloudSchemes, pu.Scheme):
			p.bad("cloud", "%q: scheme must be %s", u, strings.Join(CloudSchemes, ", "))
		case pu.Port() == "":
			p.bad("cloud", "%q: port required", u)
		case pu.Hostname() == "":
			p.bad("cloud", "%q: host required", u)
		}
	}
	for _, n := range c.Curves {
		if !slices.Contains(CurveNames, n) {
			p.bad("curves", "%q is not one of %s", n, strings.Join(CurveNames, ", "))
		}
	}
}

func (c Config) validateLimits(p *problems) {
	if c.MaxPayload < 256 || c.MaxPayload > envelope.MaxMessage {
		// The COSE parser and the record decoder stop at this size.
		p.bad("max_payload", "%d outside 256..%d (a 64 KiB record and its COSE headers)", c.MaxPayload, envelope.MaxMessage)
	}
	if c.MaxPacket < c.MaxPayload+1024 {
		p.bad("max_packet", "%d must exceed max_payload (%d) by at least 1024 so oversized payloads get a too_large verdict", c.MaxPacket, c.MaxPayload)
	}
	if c.MaxConnections < 1 {
		p.bad("max_connections", "must be positive")
	}
	if c.HandshakeTimeout <= 0 {
		p.bad("handshake_timeout", "must be positive")
	}
	if c.AcceptRate <= 0 {
		p.bad("accept_rate", "must be positive")
	}
	if c.MaxInflight < 1 || c.MaxInflight > 65535 {
		p.bad("max_inflight", "%d outside 1..65535", c.MaxInflight)
	}
	if c.Queue.MaxRecords < 1 || c.Queue.MaxBytes < int64(c.MaxPayload) {
		p.bad("queue", "max_records must be positive and max_bytes at least max_payload")
	}
	if c.Queue.CommitDelay < 0 || c.Queue.CommitDelay > 100*time.Millisecond {
		p.bad("queue.commit_delay", "%s outside 0..100ms", c.Queue.CommitDelay)
	}
	if c.Relay.Window < 1 || c.Relay.Window > 65000 {
		p.bad("relay.window", "%d outside 1..65000", c.Relay.Window)
	}
}

func (c Config) validateGuards(p *problems) {
	if c.MaxAge < time.Minute {
		p.bad("max_age", "%v is under a minute", c.MaxAge)
	}
	if c.MaxSeqJump < MinSeqJump {
		p.bad("max_seq_jump", "%d is under %d", c.MaxSeqJump, MinSeqJump)
	}
	if c.Rate.Messages <= 0 || c.Rate.Burst < 1 || c.Rate.Bytes <= 0 || c.Rate.ByteBurst < c.MaxPayload {
		p.bad("rate", "messages, burst, bytes must be positive and byte_burst at least max_payload")
	}
	if c.Enroll.Validity < time.Minute {
		p.bad("enroll.validity", "%v is under a minute", c.Enroll.Validity)
	}
	if c.Enroll.Rate <= 0 || c.Enroll.Burst < 1 {
		p.bad("enroll", "rate and burst must be positive")
	}
	if c.Quarantine.Violations < 1 || c.Quarantine.Window <= 0 || c.Quarantine.Cooloff <= 0 {
		p.bad("quarantine", "violations, window and cooloff must be positive")
	}
	c.validateAudit(p)
	c.validateAnomaly(p)
	if c.Inventory.MaxDevices < 1 {
		p.bad("inventory.max_devices", "must be positive")
	}
	if err := inventory.CheckMinimums(c.MinFirmware); err != nil {
		p.bad("min_firmware", "%v", err)
	}
	if !slices.Contains(clocktrust.Modes, c.Clock.RequireSync) {
		p.bad("clock.require_sync", "%q is not %s", c.Clock.RequireSync, strings.Join(clocktrust.Modes, ", "))
	}
	if c.Clock.MaxAhead < time.Hour {
		p.bad("clock.max_ahead", "%v is under an hour", c.Clock.MaxAhead)
	}
}

func (c Config) validateAudit(p *problems) {
	a := c.Audit
	if a.Interval < time.Second {
		p.bad("audit.interval", "%v is under a second", a.Interval)
	}
	if a.SilenceFactor < 1 {
		p.bad("audit.silence_factor", "%v is under 1", a.SilenceFactor)
	}
	if a.SilenceMin < time.Second || a.Window < time.Second {
		p.bad("audit", "silence_min and window must be at least a second")
	}
	if a.Takeovers < 2 || a.Takeovers > 32 {
		p.bad("audit.takeovers", "%d outside 2..32", a.Takeovers)
	}
	if a.MaxDevices < 1 {
		p.bad("audit.max_devices", "must be positive")
	}
}

func (c Config) validateAnomaly(p *problems) {
	a := c.Anomaly
	if a.Window < time.Second || a.Window > time.Hour {
		p.bad("anomaly.window", "%v outside 1s..1h", a.Window)
	}
	if a.Warmup < a.Window {
		p.bad("anomaly.warmup", "%v is under one window (%v)", a.Warmup, a.Window)
	}
	if a.Factor < 1 || a.Deviations < 0 {
		p.bad("anomaly", "factor must be at least 1 and deviations not negative")
	}
	if a.MaxDevices < 1 {
		p.bad("anomaly.max_devices", "must be positive")
	}
	if a.MessagesFloor <= 0 || a.ReconnectsFloor <= 0 || a.RejectedFloor <= 0 || a.RejectedFloor > 1 {
		p.bad("anomaly", "messages_floor and reconnects_floor must be positive, rejected_floor within (0, 1]")
	}
}

// isLoopback reports whether host (of host:port) names only the loopback
// interface.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
