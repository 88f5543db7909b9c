// Package fleet simulates home-care devices against the gateway: from one
// device to 10,000 in one process, each with its own certificate, physiology
// ([github.com/vitalgate/vitalgate/internal/fleet/physio]), sequence number
// and backlog, over MQTT 3.1.1 or 5 with mutual TLS.
//
// # Use
//
// [Run] drives a fleet described by a [Config] and reports [Stats] while it
// runs and a [Report] at the end. [NewDevice], [Device.Next] and
// [SignRecord] are the single-device primitives, for `gateway demo` and tests.
//
// # Devices
//
// Device i (1-based) is Prefix-0000i with the certificate and key of
// pki.DevicePaths in the PKI directory, issued in bulk when missing and the
// device CA key is there. Its kind is Kinds[(i-1) % len(Kinds)]. A device
// measures Rate times per second, signs each record, and keeps up to Buffer
// records while the gateway is away (dropping the oldest beyond that); after
// a reconnect it sends the backlog in order. Its seq is kept in memory across
// reconnects and reserved in blocks in a small file per device in the state
// directory, so a rerun continues above every seq already sent.
//
// # Verdicts
//
// With MQTT 5 the PUBACK reason code is the gateway's verdict
// (docs/protocol.md#4-verdicts-and-reason-codes). Several verdicts share a code, so counts are kept by reason
// code, and, for attack messages, by the attack's expected verdict when the
// code matches it. With MQTT 3.1.1 a rejected message is acknowledged like
// an accepted one: rejections are invisible there.
//
// # Attacks
//
// With Attack set, the first Attackers devices (all by default) attack. Each
// sends at most AttackBudget attack messages a minute (under the gateway's
// quarantine threshold, so the verdict stays the one named) and normal
// records otherwise. rate_limited sends bursts as fast as acknowledgements
// come until AttackBudget rejections; revoked connects with revoked
// certificates (its own devices, Prefix-revoked-0000i) and expects the TLS
// handshake refused; flood reconnects in a loop without ramp and publishes
// a burst on every connection.
package fleet

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/vitalgate/vitalgate/internal/fleet/physio"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/verdict"
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
	PKI          string        `yaml:"pki" json:"pki"`                     // PKI directory (docs/design.md#the-pki-directory)
	Gateway      string        `yaml:"gateway" json:"gateway"`             // host:port of the gateway's device listener
	Devices      int           `yaml:"devices" json:"devices"`             // 1..MaxDevices
	Rate         float64       `yaml:"rate" json:"rate"`                   // records per second per device
	Duration     time.Duration `yaml:"duration" json:"duration"`           // how long devices measure; 0: until ctx is done
	MQTT         int           `yaml:"mqtt" json:"mqtt"`                   // 3, 5 or 0 (MQTTMix)
	QoS          byte          `yaml:"qos" json:"qos"`                     // 0 or 1
	Attack       string        `yaml:"attack" json:"attack,omitempty"`     // "" or one of Attacks()
	Attackers    int           `yaml:"attackers" json:"attackers"`         // devices that attack; 0: all
	AttackBudget int           `yaml:"attack_budget" json:"attack_budget"` // attack messages (rate_limited: rejections) per attacker per minute
	Seed         int64         `yaml:"seed" json:"seed"`                   // physiology seed of the fleet
	Ramp         float64       `yaml:"ramp" json:"ramp"`                   // new connections per second across the fleet
	Prefix       string        `yaml:"prefix" json:"prefix"`               // device ID prefix
	Key          string        `yaml:"key" json:"key"`                     // key type of issued certificates: p256 or ed25519
	Kinds        []string      `yaml:"kinds" json:"kinds"`                 // kinds, round-robin over the devices (repeat one to weight it)
	State        string        `yaml:"state" json:"state"`                 // seq state directory; default PKI/devicesim-state; "-": none
	Buffer       int           `yaml:"buffer" json:"buffer"`               // records kept per device while the gateway is away
	Window       int           `yaml:"window" json:"window"`               // QoS 1 messages in flight per device
	Timeout      time.Duration `yaml:"timeout" json:"timeout"`             // connect (TCP, TLS, CONNACK)
	AckTimeout   time.Duration `yaml:"ack_timeout" json:"ack_timeout"`     // PUBACK; then the device reconnects and resends
	Drain        time.Duration `yaml:"drain" json:"drain"`                 // after Duration: time to send the backlog and collect acks
	Progress     time.Duration `yaml:"progress" json:"progress"`           // interval of progress callbacks
	RevokeSettle time.Duration `yaml:"revoke_settle" json:"revoke_settle"` // revoked: wait after changing crl.pem, for the gateway to reload it

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
	if c.Buffer < 1 {
		bad("buffer", "%d: want at least 1", c.Buffer)
	}
	if c.Window < 1 || c.Window > 1000 {
		bad("window", "%d outside 1..1000", c.Window)
	}
	if c.Timeout < 0 || c.AckTimeout < 0 || c.Drain < 0 || c.Progress < 0 {
		bad("timeout", "negative durations")
	}
	return errors.Join(errs...)
}

// ErrUnreachable is returned by [Run] when the gateway does not accept TCP
// connections at the start.
var ErrUnreachable = errors.New("gateway unreachable")

// ErrCertificates is returned by [Run] when the PKI directory lacks the
// certificates the fleet needs and cannot issue them.
var ErrCertificates = errors.New("certificates missing")

// unreachableError reads "gateway ADDR unreachable: connection refused".
type unreachableError struct {
	addr string
	err  error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("gateway %s unreachable: %s", e.addr, errnoText(e.err))
}
func (e *unreachableError) Unwrap() []error { return []error{ErrUnreachable, e.err} }

// Stats is a snapshot of a running fleet.
type Stats struct {
	Elapsed       time.Duration     `json:"-"`
	ElapsedS      float64           `json:"elapsed_s"`
	Devices       int               `json:"devices"`
	Connected     int               `json:"connected"`      // devices connected now
	Connects      uint64            `json:"connects"`       // successful connections, reconnects included
	ConnectErrors uint64            `json:"connect_errors"` // failed attempts (TLS refusals included)
	TLSRefused    uint64            `json:"tls_refused"`    // handshakes the gateway refused (TLS alert)
	Connacks      map[string]uint64 `json:"connack_codes,omitempty"`
	Generated     uint64            `json:"generated"`  // records made
	Sent          uint64            `json:"sent"`       // PUBLISH packets written, resends included
	Resent        uint64            `json:"resent"`     // of which resends after a lost connection
	Acked         uint64            `json:"acked"`      // PUBACK 0x00 (any PUBACK with MQTT 3.1.1)
	Rejected      map[string]uint64 `json:"rejected"`   // by expected verdict (attack messages with the matching code), else by code
	Codes         map[string]uint64 `json:"codes"`      // every PUBACK reason code, "0x00" included
	Duplicates    uint64            `json:"duplicates"` // resends answered replay: stored before the ack was lost
	Dropped       uint64            `json:"dropped"`    // records dropped from a full buffer
	Buffered      int64             `json:"buffered"`   // records waiting to be sent or acknowledged
	Errors        uint64            `json:"errors"`     // publishes without an answer (timeout, connection lost)
	MsgRate       float64           `json:"msg_per_s"`  // answered messages per second, recent
	P50           time.Duration     `json:"-"`
	P99           time.Duration     `json:"-"`
	P50MS         float64           `json:"p50_ms"` // PUBLISH to PUBACK
	P99MS         float64           `json:"p99_ms"`
}

// String is the one-line progress display:
// "connected 50/50 sent 1200 acked 1190 rejected 10 (bad_signature:10) | 398 msg/s p50 2.1ms p99 8.0ms".
func (s Stats) String() string {
	var b strings.Builder
	var rejected uint64
	for _, n := range s.Rejected {
		rejected += n
	}
	fmt.Fprintf(&b, "connected %d/%d sent %d acked %d rejected %d", s.Connected, s.Devices, s.Sent, s.Acked, rejected)
	for i, k := range sortedKeys(s.Rejected) {
		sep := " "
		if i == 0 {
			sep = " ("
		}
		fmt.Fprintf(&b, "%s%s:%d", sep, k, s.Rejected[k])
	}
	if rejected > 0 {
		b.WriteByte(')')
	}
	fmt.Fprintf(&b, " | %.0f msg/s p50 %s p99 %s", s.MsgRate, ms(s.P50), ms(s.P99))
	if s.Buffered > 0 {
		fmt.Fprintf(&b, " buffered %d", s.Buffered)
	}
	if s.Dropped > 0 {
		fmt.Fprintf(&b, " dropped %d", s.Dropped)
	}
	if s.ConnectErrors > 0 {
		fmt.Fprintf(&b, " connect_errors %d", s.ConnectErrors)
	}
	if s.TLSRefused > 0 {
		fmt.Fprintf(&b, " tls_refused %d", s.TLSRefused)
	}
	return b.String()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// AttackReport is the outcome of an attack run.
type AttackReport struct {
	Mode      string            `json:"mode"`
	Attackers int               `json:"attackers"`
	Expected  string            `json:"expected"`                // the verdict (or tls_refused) each attack message must get
	Code      string            `json:"code,omitempty"`          // its MQTT 5 reason code
	Sent      uint64            `json:"sent"`                    // attack messages answered (or connection attempts, for revoked)
	Matched   uint64            `json:"matched"`                 // answered with the expected code (or refused, for revoked)
	Codes     map[string]uint64 `json:"codes,omitempty"`         // reason codes of the attack messages
	Verdicts  map[string]string `json:"code_verdicts,omitempty"` // the verdicts each of those codes stands for
	Connected uint64            `json:"connected,omitempty"`     // revoked: handshakes that were accepted (should be 0)
	Note      string            `json:"note,omitempty"`
}

// Report is the final report of a run.
type Report struct {
	Config Config         `json:"config"`
	Start  time.Time      `json:"start"`
	End    time.Time      `json:"end"`
	Kinds  map[string]int `json:"kinds"` // devices per kind
	Stats  Stats          `json:"stats"`
	Attack *AttackReport  `json:"attack,omitempty"`
}

// codeName is the key of a reason code in the maps of [Stats].
func codeName(c byte) string { return fmt.Sprintf("0x%02x", c) }

// codeVerdicts lists the verdicts of docs/protocol.md#4-verdicts-and-reason-codes behind a code.
func codeVerdicts(c byte) string {
	var vs []string
	for _, v := range verdict.All() {
		if v.Code().Code == c {
			vs = append(vs, string(v))
		}
	}
	return strings.Join(vs, "|")
}

// counters are the fleet's shared, lock-free counters.
type counters struct {
	connected, buffered                         atomic.Int64
	connects, connectErrors, tlsRefused         atomic.Uint64
	generated, sent, resent, acked, answered    atomic.Uint64
	duplicates, dropped, errors                 atomic.Uint64
	connacks, codes, attackCodes                [256]atomic.Uint64
	attackSent, attackMatched, revokedConnected atomic.Uint64
	latency                                     histogram
}

// fleet is one Run.
type fleet struct {
	cfg        Config
	ctr        counters
	limiter    *rate.Limiter
	roots      *tls.Config // template: RootCAs, ServerName, MinVersion
	log        *slog.Logger
	wg         sync.WaitGroup
	start      time.Time
	expectCode byte
	hasExpect  bool
	settle     time.Duration // revoked attackers wait this long before their first attempt
}

// Run starts the fleet, calls progress (if not nil) every cfg.Progress with a
// snapshot, and returns the report when cfg.Duration has passed (plus up to
// cfg.Drain to send the backlog) or ctx is done. Errors before the first
// connection are [ErrCertificates], [ErrUnreachable] or a configuration
// error; once devices run, connection problems are counted, not returned.
func Run(ctx context.Context, cfg Config, progress func(Stats)) (Report, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return Report{}, err
	}
	f := &fleet{cfg: cfg, log: cfg.Logger}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	f.expectCode, f.hasExpect = expectedCode(cfg.Attack)

	runners, err := f.prepare()
	if err != nil {
		return Report{}, err
	}
	if err := probe(ctx, cfg.Gateway, cfg.Timeout); err != nil {
		return Report{}, err
	}
	rep := Report{Config: cfg, Kinds: map[string]int{}}
	for _, r := range runners {
		if r.dev != nil {
			rep.Kinds[r.dev.Kind]++
		}
	}

	burst := 1
	if cfg.Ramp == 0 || cfg.Attack == AttackFlood {
		f.limiter = rate.NewLimiter(rate.Inf, 1)
	} else {
		burst = max(1, int(cfg.Ramp/10))
		f.limiter = rate.NewLimiter(rate.Limit(cfg.Ramp), burst)
	}

	f.start = time.Now()
	rep.Start = f.start
	hard, cancelHard := context.WithCancel(ctx)
	defer cancelHard()
	stopGen := make(chan struct{})
	if cfg.Duration > 0 {
		t := time.AfterFunc(cfg.Duration, func() {
			close(stopGen)
			time.AfterFunc(cfg.Drain, cancelHard)
		})
		defer t.Stop()
	}
	var done sync.WaitGroup
	for _, r := range runners {
		done.Go(func() { r.run(hard, stopGen) })
	}
	allDone := make(chan struct{})
	go func() { done.Wait(); close(allDone) }()

	var rt rateTracker
	tick := time.NewTicker(cfg.Progress)
	defer tick.Stop()
loop:
	for {
		select {
		case <-allDone:
			break loop
		case <-tick.C:
			if progress != nil {
				progress(f.snapshot(&rt))
			}
		}
	}
	cancelHard()
	f.wg.Wait() // publish and connect goroutines
	rep.End = time.Now()
	rep.Stats = f.snapshot(&rt)
	if progress != nil {
		progress(rep.Stats)
	}
	rep.Attack = f.attackReport()
	return rep, nil
}

// probe dials the gateway once, so that a fleet against nothing fails fast
// with a clear error.
func probe(ctx context.Context, addr string, timeout time.Duration) error {
	d := net.Dialer{Timeout: min(timeout, 5*time.Second)}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return &unreachableError{addr: addr, err: err}
	}
	return c.Close()
}

// prepare checks and issues certificates and builds one runner per device.
func (f *fleet) prepare() ([]*runner, error) {
	cfg := f.cfg
	caFile := filepath.Join(cfg.PKI, pki.FileCA)
	if _, err := os.Stat(caFile); err != nil {
		return nil, fmt.Errorf("%w: %s (create the PKI with `certs init --dir %s`)", ErrCertificates, caFile, cfg.PKI)
	}
	roots, err := pki.LoadPool(caFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCertificates, err)
	}
	host, _, _ := net.SplitHostPort(cfg.Gateway)
	f.roots = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: host}

	normal := cfg.Devices
	ids, err := ensureDevices(cfg.PKI, cfg.Prefix, normal, pki.KeyAlg(cfg.Key))
	if err != nil {
		return nil, err
	}
	var revoked []string
	if cfg.Attack == AttackRevoked {
		revoked, err = ensureDevices(cfg.PKI, cfg.Prefix+"-revoked", cfg.Attackers, pki.KeyAlg(cfg.Key))
		if err != nil {
			return nil, err
		}
		crl := filepath.Join(cfg.PKI, pki.FileCRL)
		before := stamp(crl)
		for _, id := range revoked {
			if err := pki.Revoke(cfg.PKI, id); err != nil {
				return nil, fmt.Errorf("revoke %s: %w", id, err)
			}
		}
		if stamp(crl) != before { // the gateway polls crl.pem: give it time to see the change
			f.settle = cfg.RevokeSettle
		}
	}
	var store *seqStore
	if cfg.State != "-" {
		if store, err = newSeqStore(cfg.State); err != nil {
			return nil, err
		}
	}

	all := make([]*runner, len(ids)+len(revoked))
	errs := make([]error, len(all))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(all) {
					return
				}
				if i < len(ids) {
					all[i], errs[i] = f.newRunner(i, ids[i], ids, store)
				} else {
					all[i], errs[i] = f.newRevokedRunner(revoked[i-len(ids)])
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return all, nil
}

// ensureDevices returns the IDs prefix-00001..prefix-{n}, issuing the
// certificates that are missing when the device CA key is there.
func ensureDevices(dir, prefix string, n int, key pki.KeyAlg) ([]string, error) {
	ids := make([]string, n)
	missing := 0
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%05d", prefix, i+1)
		c, k := pki.DevicePaths(dir, ids[i])
		if !exists(c) || !exists(k) {
			missing++
		}
	}
	if missing == 0 {
		return ids, nil
	}
	caKey := filepath.Join(dir, pki.FileDeviceCAKey)
	if !exists(caKey) {
		c, _ := pki.DevicePaths(dir, ids[0])
		return nil, fmt.Errorf("%w: %d of %d device certificates (e.g. %s), and no %s to issue them",
			ErrCertificates, missing, n, c, caKey)
	}
	if _, err := pki.IssueDevices(dir, n, prefix, key); err != nil {
		return nil, fmt.Errorf("%w: issue devices: %v", ErrCertificates, err)
	}
	return ids, nil
}

// stamp identifies a version of a file by modification time and size.
func stamp(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	return fmt.Sprint(fi.ModTime().UnixNano(), fi.Size())
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// snapshot reads the counters.
func (f *fleet) snapshot(rt *rateTracker) Stats {
	c := &f.ctr
	now := time.Now()
	s := Stats{
		Elapsed:       now.Sub(f.start),
		Devices:       f.cfg.Devices,
		Connected:     int(c.connected.Load()),
		Connects:      c.connects.Load(),
		ConnectErrors: c.connectErrors.Load(),
		TLSRefused:    c.tlsRefused.Load(),
		Generated:     c.generated.Load(),
		Sent:          c.sent.Load(),
		Resent:        c.resent.Load(),
		Acked:         c.acked.Load(),
		Duplicates:    c.duplicates.Load(),
		Dropped:       c.dropped.Load(),
		Buffered:      c.buffered.Load(),
		Errors:        c.errors.Load(),
		Rejected:      map[string]uint64{},
		Codes:         map[string]uint64{},
	}
	if f.cfg.Attack == AttackRevoked {
		s.Devices += f.cfg.Attackers
	}
	s.ElapsedS = s.Elapsed.Seconds()
	for i := range c.codes {
		n := c.codes[i].Load()
		if n == 0 {
			continue
		}
		s.Codes[codeName(byte(i))] = n
		if i < 0x80 {
			continue
		}
		if f.hasExpect && byte(i) == f.expectCode {
			if m := c.attackMatched.Load(); m > 0 {
				s.Rejected[f.cfg.Attack] = m
				n -= min(n, m)
			}
		}
		if n > 0 {
			s.Rejected[codeName(byte(i))] = n
		}
	}
	for i := range c.connacks {
		if n := c.connacks[i].Load(); n > 0 {
			if s.Connacks == nil {
				s.Connacks = map[string]uint64{}
			}
			s.Connacks[codeName(byte(i))] = n
		}
	}
	q := c.latency.Quantiles(0.5, 0.99)
	s.P50, s.P99 = q[0], q[1]
	s.P50MS, s.P99MS = float64(s.P50)/1e6, float64(s.P99)/1e6
	s.MsgRate = rt.rate(now, c.answered.Load())
	return s
}

// rateTracker turns a growing count into a recent rate (over about the
// last two seconds).
type rateTracker struct {
	ts []time.Time
	ns []uint64
}

func (r *rateTracker) rate(now time.Time, n uint64) float64 {
	r.ts = append(r.ts, now)
	r.ns = append(r.ns, n)
	for len(r.ts) > 2 && now.Sub(r.ts[1]) >= 2*time.Second {
		r.ts, r.ns = r.ts[1:], r.ns[1:]
	}
	if len(r.ts) > 64 { // bounded whatever the interval
		r.ts, r.ns = slices.Clone(r.ts[len(r.ts)-64:]), slices.Clone(r.ns[len(r.ns)-64:])
	}
	dt := now.Sub(r.ts[0]).Seconds()
	if dt <= 0 {
		return 0
	}
	return float64(n-r.ns[0]) / dt
}

// attackReport summarises the attack messages.
func (f *fleet) attackReport() *AttackReport {
	mode := f.cfg.Attack
	if mode == "" {
		return nil
	}
	c := &f.ctr
	a := &AttackReport{Mode: mode, Attackers: f.cfg.Attackers, Codes: map[string]uint64{}, Verdicts: map[string]string{}}
	switch mode {
	case AttackRevoked:
		a.Expected = OutcomeTLSRefused
		a.Sent = c.attackSent.Load()
		a.Matched = c.tlsRefused.Load()
		a.Connected = c.revokedConnected.Load()
	case AttackFlood:
		a.Expected = "gateway stays up; excess answered rate_limited (0x97) or refused at connect"
		a.Sent = c.attackSent.Load()
		a.Note = fmt.Sprintf("connects %d, connect errors %d", c.connects.Load(), c.connectErrors.Load())
	default:
		a.Expected = mode
		a.Code = codeName(f.expectCode)
		a.Sent = c.attackSent.Load()
		a.Matched = c.attackMatched.Load()
	}
	for i := range c.attackCodes {
		if n := c.attackCodes[i].Load(); n > 0 {
			a.Codes[codeName(byte(i))] = n
			if v := codeVerdicts(byte(i)); v != "" {
				a.Verdicts[codeName(byte(i))] = v
			}
		}
	}
	if f.cfg.MQTT != MQTT5 && mode != AttackRevoked {
		a.Note = strings.TrimSpace(a.Note + " MQTT 3.1.1 devices get a plain PUBACK for rejected messages: only MQTT 5 devices show verdicts")
	}
	if mode == AttackRateLimited {
		a.Note = strings.TrimSpace(a.Note + " bursts: messages within the device's budget are accepted (0x00)")
	}
	return a
}
