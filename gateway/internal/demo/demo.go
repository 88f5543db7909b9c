// Package demo runs the whole system in one process for `gateway demo`: a
// throwaway PKI, the gateway with its embedded cloud broker, a simulated
// fleet with a few attackers, a firmware rollout to the oximeters (a signed
// test image in an update repository served over HTTPS, started by an
// operator at the cloud), and a clinician's app whose view is drawn in the
// terminal ([github.com/vitalgate/vitalgate/gateway/internal/view]).
//
// Everything listens on 127.0.0.1 with ports chosen by the kernel, so a demo
// never collides with a running gateway or another demo.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	mqtt3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/gateway/internal/server"
	"github.com/vitalgate/vitalgate/gateway/internal/view"
	"github.com/vitalgate/vitalgate/internal/cloud"
	"github.com/vitalgate/vitalgate/internal/fleet"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/updrepo"
)

// Site and GatewayID of the demo's PKI.
const (
	Site      = "demo"
	GatewayID = "gw1"
)

// Device ID prefixes: patients are patient-00001 ..., attacker k is
// attacker-{a,b,c,...}-00001.
const (
	PatientPrefix  = "patient"
	AttackerPrefix = "attacker"
)

// AttackCycles are the attack modes each attacker cycles through, one phase
// each; attacker k uses cycle k % len. Every mode gets a verdict the gateway
// counts. Left out: revoked and flood, which have no verdict (see `devicesim
// --attack`), and rate_limited, whose bursts would crowd the view.
var AttackCycles = [][]string{
	{fleet.AttackBadSignature, fleet.AttackMalformed, fleet.AttackFuture},
	{fleet.AttackIdentityMismatch, fleet.AttackACLDenied, fleet.AttackStale},
	{fleet.AttackSchema, fleet.AttackTooLarge, fleet.AttackReplay},
}

// Options configure a demo run. Zero fields take the defaults noted.
type Options struct {
	Devices   int           // simulated patients' devices (default 12: two of each of the six kinds)
	Attackers int           // attacking devices (default 3; negative: none)
	Duration  time.Duration // 0: until ctx is done
	Dir       string        // PKI and data go under it (default: a new temporary directory); reused when it holds a PKI
	Out       io.Writer     // the view (default os.Stdout)
	Terminal  bool          // redraw in place with ANSI codes and colours; else append plain snapshots
	Refresh   time.Duration // redraw interval (default 500ms on a terminal, 2s otherwise)
	Phase     time.Duration // how long an attacker stays in one mode (default: 30s, shorter to fit every mode of its cycle into Duration)
	Oximeters int           // the site's other oximeters, which the rollout updates with the patients' (default 20; negative: none)
	RolloutAt time.Duration // when the operator starts the rollout (default 8s: the devices have reported their models)
}

// Result says where a run left its files and what it saw last.
type Result struct {
	Dir, PKI, Data, Log string
	Repo                string // the update repository
	Version             string // the firmware the rollout installs
	DeviceAddr          string // the gateway's device listener
	HTTPSAddr           string // the gateway's HTTPS listener: enrolment, firmware downloads
	AppsAddr            string // the embedded cloud broker's apps listener
	WebAddr             string // the clinician web view (https://WebAddr/)
	WebToken            string // the file holding an operator's token for the web view
	HTTPAddr            string // /metrics, /healthz, /readyz
	Final               view.Snapshot
	Fleet               fleet.Stats   // the patients' fleet, last progress
	AuditEntries        int           // entries of the audit log after shutdown
	AuditErr            error         // the audit log's chain check
	Attacks             []AttackPhase // attack phases run
}

// AttackPhase is one attacker's run in one mode.
type AttackPhase struct {
	Device   string
	Mode     string
	Sent     uint64 // attack messages answered
	Matched  uint64 // answered with the mode's expected reason code
	Err      string `json:",omitempty"`
	Finished bool
}

func (o *Options) defaults() {
	if o.Devices == 0 {
		o.Devices = 12
	}
	if o.Attackers == 0 {
		o.Attackers = 3
	}
	if o.Attackers < 0 {
		o.Attackers = 0
	}
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Refresh <= 0 {
		o.Refresh = 2 * time.Second
		if o.Terminal {
			o.Refresh = 500 * time.Millisecond
		}
	}
	if o.Phase <= 0 {
		o.Phase = fitPhase(o.Duration)
	}
	if o.Oximeters == 0 {
		o.Oximeters = 20
	}
	o.Oximeters = max(o.Oximeters, 0)
	if o.RolloutAt <= 0 {
		o.RolloutAt = 8 * time.Second
	}
}

// fitPhase is the default attack phase: 30 s, or shorter (down to 5 s) so
// that every mode of an attacker's cycle runs within a demo of duration d
// (0: unbounded). A phase also takes phaseDrain to collect its answers, and
// the fleet takes a few seconds to start.
func fitPhase(d time.Duration) time.Duration {
	const full, least, startup = 30 * time.Second, 5 * time.Second, 5 * time.Second
	if d <= 0 {
		return full
	}
	n := 0
	for _, c := range AttackCycles {
		n = max(n, len(c))
	}
	p := (d-startup)/time.Duration(n) - phaseDrain
	return min(max(p, least), full)
}

// phaseDrain is how long an attack phase waits for its last answers.
const phaseDrain = 2 * time.Second

// Validate reports bad options.
func (o Options) Validate() error {
	var errs []error
	if o.Devices < 0 || o.Devices > 1000 {
		errs = append(errs, fmt.Errorf("devices: %d outside 1..1000", o.Devices))
	}
	if o.Oximeters > 1000 {
		errs = append(errs, fmt.Errorf("oximeters: %d outside 0..1000", o.Oximeters))
	}
	if o.Attackers > 26 {
		errs = append(errs, fmt.Errorf("attackers: %d outside 0..26", o.Attackers))
	}
	if o.Duration < 0 {
		errs = append(errs, errors.New("duration: negative"))
	}
	return errors.Join(errs...)
}

// Run runs the demo until ctx is done or o.Duration has passed, then stops
// the fleet, the app and the gateway (which closes its embedded cloud
// broker) in that order. It returns where the files went even on error, once
// the directory exists.
func Run(ctx context.Context, o Options) (*Result, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o.defaults()
	if o.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}

	// 1. Files: a throwaway PKI (or the one in --dir) and the data directory.
	res, err := prepareFiles(o)
	if err != nil {
		return res, err
	}
	logFile, err := os.OpenFile(res.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return res, fmt.Errorf("open log: %w", err)
	}
	defer logFile.Close()
	log := slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelInfo}))

	// 2. The update repository, served as a static HTTPS host would, and the
	// gateway, with the embedded cloud broker, on free loopback ports.
	repoURL, stopRepo, err := updrepo.Serve(res.PKI, res.Repo, log.With("component", "repository"))
	if err != nil {
		return res, err
	}
	defer stopRepo()
	gw, err := startGateway(res, repoURL, log)
	if err != nil {
		return res, err
	}

	// 3. The clinician's app at the cloud: JWT, TLS, both topic trees.
	v := view.New()
	app, err := connectApp(res.PKI, res.AppsAddr, gw.Site(), v)
	if err != nil {
		gw.Close()
		return res, err
	}

	// 4. The fleet: patients, the site's other oximeters, the operator's
	// rollout, and attackers cycling through attack modes.
	st := &fleetState{now: map[int]string{}}
	stopFleet := startFleets(ctx, o, res, gw.Site(), log, st)

	// 5. Draw until the end.
	draw := func(final bool) {
		hdr := header(res, st, o.Attackers, o.Terminal, final)
		var b strings.Builder
		if o.Terminal && !final {
			b.WriteString("\x1b[H\x1b[2J")
		} else {
			fmt.Fprintf(&b, "--- %s ---\n", time.Now().Format("15:04:05.0"))
		}
		view.Render(&b, v.Snapshot(), view.Options{Color: o.Terminal, Header: hdr})
		io.WriteString(o.Out, b.String())
	}
	drawUntilDone(ctx, o.Refresh, draw)

	// 6. Stop in order: fleet, app, gateway (relay drain, queue, audit, cloud).
	stopFleet()
	draw(true)
	app.Disconnect(250)
	closeErr := gw.Close()
	res.Final = v.Snapshot()
	st.mu.Lock()
	res.Fleet, res.Attacks = st.stats, st.phases
	st.mu.Unlock()
	res.AuditEntries, res.AuditErr = audit.Verify(filepath.Join(res.Data, server.AuditFile))
	if closeErr != nil {
		return res, fmt.Errorf("close gateway: %w", closeErr)
	}
	return res, nil
}

// startFleets starts the patients' fleet, the site's other oximeters, the
// operator's rollout and the attackers, noting their progress in st. The
// function it returns stops them all and waits for them.
func startFleets(ctx context.Context, o Options, res *Result, site string, log *slog.Logger, st *fleetState) func() {
	fctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { runPatients(fctx, res, o.Devices, log, st) })
	if o.Oximeters > 0 {
		wg.Go(func() { runOximeters(fctx, res, o.Oximeters, log) })
	}
	wg.Go(func() {
		if err := startRollout(fctx, res, site, res.Version, o.RolloutAt, log); err != nil {
			log.Error("rollout", "error", err)
			st.mu.Lock()
			st.err = errors.Join(st.err, err)
			st.mu.Unlock()
		}
	})
	for k := range o.Attackers {
		wg.Go(func() { runAttacker(fctx, k, res, o.Phase, log, st) })
	}
	return func() { cancel(); wg.Wait() }
}

// drawUntilDone draws a frame now and one every refresh until ctx is done.
func drawUntilDone(ctx context.Context, refresh time.Duration, draw func(final bool)) {
	t := time.NewTicker(refresh)
	defer t.Stop()
	draw(false)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			draw(false)
		}
	}
}

// prepareFiles makes the demo directory (a new temporary one unless o.Dir),
// creates the PKI in it unless it holds one, and issues the patients'
// device certificates. The Result it returns names the directory, the PKI,
// the data directory and the log file.
func prepareFiles(o Options) (*Result, error) {
	res := &Result{Dir: o.Dir}
	if res.Dir == "" {
		d, err := os.MkdirTemp("", "vitalgate-demo-")
		if err != nil {
			return nil, fmt.Errorf("demo directory: %w", err)
		}
		res.Dir = d
	} else if err := os.MkdirAll(res.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("demo directory: %w", err)
	}
	res.PKI, res.Data = filepath.Join(res.Dir, "pki"), filepath.Join(res.Dir, "data")
	res.Log, res.Repo = filepath.Join(res.Dir, "gateway.log"), filepath.Join(res.Dir, "update-repo")
	if err := pki.Init(res.PKI, pki.InitOptions{Site: Site, GatewayID: GatewayID}); err != nil && !errors.Is(err, pki.ErrExists) {
		return res, fmt.Errorf("create PKI: %w", err)
	}
	if _, err := pki.IssueDevices(res.PKI, o.Devices, PatientPrefix, pki.P256); err != nil {
		return res, fmt.Errorf("issue device certificates: %w", err)
	}
	if _, err := pki.IssueDevices(res.PKI, o.Oximeters, RolloutPrefix, pki.P256); err != nil {
		return res, fmt.Errorf("issue device certificates: %w", err)
	}
	var err error
	res.Version, err = prepareUpdates(res)
	return res, err
}

// startGateway starts the gateway on res's PKI and data directory, with
// the embedded cloud broker, every listener on a free loopback port, and
// notes the listeners' addresses in res.
func startGateway(res *Result, repoURL string, log *slog.Logger) (*server.Gateway, error) {
	cfg := config.Default()
	cfg.PKI, cfg.Data, cfg.Updates.URL = res.PKI, res.Data, repoURL
	cfg.Listen, cfg.HTTP, cfg.HTTPS = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Embedded = config.Embedded{Apps: "127.0.0.1:0", WS: "127.0.0.1:0", Web: "127.0.0.1:0"}
	gw, err := server.New(cfg, log)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if err := gw.Start(); err != nil {
		gw.Close()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	res.DeviceAddr, res.AppsAddr, res.HTTPAddr, res.HTTPSAddr = gw.DeviceAddr(), gw.Cloud().AppsAddr(), gw.HTTPAddr(), gw.HTTPSAddr()
	res.WebAddr = gw.Cloud().WebAddr()
	if err := writeWebToken(res, gw.Site()); err != nil {
		gw.Close()
		return nil, err
	}
	return gw, nil
}

// WebTokenFile is the name, in the demo directory, of the web view's token.
const WebTokenFile = "webview.token"

// writeWebToken mints an operator's token for the site (so the web view
// shows the security events too), valid for a day, into DIR/webview.token,
// readable by its owner only.
func writeWebToken(res *Result, site string) error {
	tok, err := pki.MintRoleToken(res.PKI, "demo-web", pki.RoleOperator, []string{site}, 24*time.Hour)
	if err != nil {
		return fmt.Errorf("web view token: %w", err)
	}
	res.WebToken = filepath.Join(res.Dir, WebTokenFile)
	if err := os.WriteFile(res.WebToken, []byte(tok+"\n"), 0o600); err != nil {
		return fmt.Errorf("web view token: %w", err)
	}
	return nil
}

// fleetState is what the fleet's goroutines report while the demo runs: the
// view's header reads it, and the Result takes it at the end.
type fleetState struct {
	mu     sync.Mutex
	stats  fleet.Stats    // the patients' fleet, last progress
	err    error          // the patients' fleet's error, if it stopped on one
	phases []AttackPhase  // attack phases run
	now    map[int]string // attacker k's device and current mode
}

// runPatients runs the patients' fleet of n devices until ctx is done,
// noting its progress and any error in st.
func runPatients(ctx context.Context, res *Result, n int, log *slog.Logger, st *fleetState) {
	fc := fleet.Default()
	fc.PKI, fc.Gateway, fc.Devices, fc.Prefix, fc.MQTT = res.PKI, res.DeviceAddr, n, PatientPrefix, fleet.MQTTMix
	fc.HTTPS = res.HTTPSAddr
	fc.Logger = log.With("component", "fleet")
	_, err := fleet.Run(ctx, fc, func(s fleet.Stats) { st.mu.Lock(); st.stats = s; st.mu.Unlock() })
	if err != nil && ctx.Err() == nil {
		st.mu.Lock()
		st.err = err
		st.mu.Unlock()
		log.Error("fleet", "error", err)
	}
}

// runAttacker runs attacker k until ctx is done: one phase of length phase
// per mode of its cycle, round and round, each noted in st.
func runAttacker(ctx context.Context, k int, res *Result, phase time.Duration, log *slog.Logger, st *fleetState) {
	cycle := AttackCycles[k%len(AttackCycles)]
	prefix := fmt.Sprintf("%s-%c", AttackerPrefix, 'a'+k)
	for i := 0; ctx.Err() == nil; i++ {
		mode := cycle[i%len(cycle)]
		st.mu.Lock()
		st.now[k] = prefix + "-00001 " + mode
		st.mu.Unlock()
		ac := fleet.Default()
		ac.PKI, ac.Gateway, ac.Devices, ac.Prefix = res.PKI, res.DeviceAddr, 1, prefix
		ac.Attack, ac.Attackers, ac.Duration, ac.Drain = mode, 1, phase, phaseDrain
		ac.Rate, ac.AttackBudget = 0.5, 5 // 10 violations a minute at most: under the quarantine threshold
		ac.Seed = int64(k + 100)
		ac.Updates = false // not part of the rollout
		ac.Logger = log.With("component", "attacker", "mode", mode)
		rep, err := fleet.Run(ctx, ac, nil)
		p := AttackPhase{Device: prefix + "-00001", Mode: mode, Finished: ctx.Err() == nil}
		if err != nil {
			p.Err = err.Error()
		}
		if rep.Attack != nil {
			p.Sent, p.Matched = rep.Attack.Sent, rep.Attack.Matched
		}
		st.mu.Lock()
		st.phases = append(st.phases, p)
		st.mu.Unlock()
		if err != nil {
			log.Error("attacker", "mode", mode, "error", err)
			select { // do not spin on a persistent error
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// header is the lines above the view: the addresses, the fleet's progress,
// what the attackers do now, the fleet's error, and (on a terminal, until
// the final frame) how to stop.
func header(res *Result, st *fleetState, attackers int, terminal, final bool) []string {
	st.mu.Lock()
	stats := st.stats
	var att []string
	for k := range attackers {
		if s := st.now[k]; s != "" {
			att = append(att, s)
		}
	}
	ferr := st.err
	st.mu.Unlock()
	hdr := []string{
		fmt.Sprintf("VitalGate demo  devices mTLS %s  cloud apps %s  metrics http://%s/metrics", res.DeviceAddr, res.AppsAddr, res.HTTPAddr),
		fmt.Sprintf("web view https://%s/  (trust %s; token in %s)", res.WebAddr, filepath.Join(res.PKI, pki.FileCA), res.WebToken),
		fmt.Sprintf("fleet: %s", stats.String()),
	}
	if len(att) > 0 {
		hdr = append(hdr, "attackers now: "+strings.Join(att, ", "))
	}
	if ferr != nil {
		hdr = append(hdr, "fleet error: "+ferr.Error())
	}
	if !final {
		if terminal {
			hdr = append(hdr, "Ctrl-C to stop")
		}
	}
	return hdr
}

// connectApp connects a clinician app to the cloud broker's apps listener
// with a JWT for site, and feeds what it receives into v: rollouts, telemetry through
// a cloud.Watcher that trusts ca.crt alone (decode, drop duplicates, check
// the device signature end to end with the chain the gateway published on
// certs/{site}/{device}), security events by verdict.
func connectApp(pkiDir, addr, site string, v *view.View) (mqtt3.Client, error) {
	w, err := cloud.NewChainWatcher(filepath.Join(pkiDir, pki.FileCA), 0)
	if err != nil {
		return nil, fmt.Errorf("clinician app: %w", err)
	}
	// The view shows the site's security events and rollouts beside the
	// vitals: an operator's token (a clinician's reads neither).
	tok, err := pki.MintRoleToken(pkiDir, "demo-clinician", pki.RoleOperator, []string{site}, 24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("clinician app token: %w", err)
	}
	tc, err := pki.ClientTLS(filepath.Join(pkiDir, pki.FileCA), "", "")
	if err != nil {
		return nil, fmt.Errorf("clinician app TLS: %w", err)
	}
	tc.ServerName = "localhost"
	o := mqtt3.NewClientOptions().AddBroker("ssl://" + addr).SetClientID("demo-clinician").
		SetUsername("demo-clinician").SetPassword(tok).SetTLSConfig(tc).SetCleanSession(true).
		SetAutoReconnect(true).SetConnectRetry(false).SetOrderMatters(false)
	c := mqtt3.NewClient(o)
	if t := c.Connect(); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		return nil, fmt.Errorf("clinician app: connect to %s: %v", addr, t.Error())
	}
	// The chains first, so their retained messages come before the records.
	chains := c.Subscribe("certs/"+site+"/#", 1, func(_ mqtt3.Client, m mqtt3.Message) {
		v.Chain(w.HandleChain(m.Topic(), m.Payload()))
	})
	if !chains.WaitTimeout(10*time.Second) || chains.Error() != nil {
		c.Disconnect(0)
		return nil, fmt.Errorf("clinician app: subscribe: %v", chains.Error())
	}
	filters := map[string]byte{"telemetry/" + site + "/#": 1, "security/" + site + "/#": 1, "jobs/" + site + "/#": 1}
	sub := c.SubscribeMultiple(filters,
		func(_ mqtt3.Client, m mqtt3.Message) {
			if strings.HasPrefix(m.Topic(), "security/") {
				_ = v.SecurityEvent(m.Payload()) // a malformed event is not counted
				return
			}
			if strings.HasPrefix(m.Topic(), "jobs/") {
				_ = v.Job(m.Topic(), m.Payload()) // what does not parse changes nothing
				return
			}
			s, err := w.Handle(m.Topic(), m.Payload())
			if err != nil {
				s = nil
			}
			if s != nil && s.Msg != nil && (strings.HasPrefix(s.Msg.Rec.Dev, AttackerPrefix+"-") || strings.HasPrefix(s.Msg.Rec.Dev, RolloutPrefix+"-")) {
				// An attacker's valid records between its attacks: not a
				// patient, so not a row of the clinician view (its
				// rejections show below the table). Nor are the site's
				// other oximeters: they show in the rollout.
				return
			}
			v.Telemetry(s)
		})
	if !sub.WaitTimeout(10*time.Second) || sub.Error() != nil {
		c.Disconnect(0)
		return nil, fmt.Errorf("clinician app: subscribe: %v", sub.Error())
	}
	return c, nil
}
