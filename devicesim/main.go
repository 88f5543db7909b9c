// Command devicesim runs a fleet of simulated home-care devices against the
// gateway (docs/design.md#figures, docs/operations.md#devicesim): realistic vitals, attack modes, a
// live one-line summary on stderr and a final report.
//
//	devicesim [--pki DIR] [--gateway ADDR] [--devices N] [--rate R] [--duration D]
//	          [--mqtt 3|5|mix] [--qos 0|1] [--attack MODE] [--report FILE] [--config FILE]
//	          [--enroll [--est URL]]
//
// Exit status: 0 after a run, 2 on bad flags or configuration, missing
// certificates or an unreachable gateway, 1 on other errors.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vitalgate/vitalgate/internal/bench"
	"github.com/vitalgate/vitalgate/internal/cli"
	"github.com/vitalgate/vitalgate/internal/fleet"
	"github.com/vitalgate/vitalgate/internal/version"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if version.Asked(args) {
		version.Get().Print(stdout, "devicesim")
		return 0
	}
	if len(args) > 0 && args[0] == "bench" {
		return benchCmd(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == bench.RelayCommand { // hidden: the bench's bare mochi relay
		return bench.RelayMain(args[1:], stderr)
	}
	if len(args) > 0 && args[0] == "conform" {
		return conformCmd(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "run" {
		return runCmd(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "anomalies" {
		return anomaliesCmd(ctx, args[1:], stdout, stderr)
	}
	cfg, report, err := parse(args, stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "devicesim: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	live := newLive(stderr)
	rep, err := fleet.Run(ctx, cfg, live.show)
	live.end()
	if err != nil {
		fmt.Fprintf(stderr, "devicesim: %v\n", err)
		if errors.Is(err, fleet.ErrUnreachable) || errors.Is(err, fleet.ErrCertificates) {
			return 2
		}
		return 1
	}
	summary(stderr, rep)
	if report != "" {
		if err := writeReport(report, stdout, rep); err != nil {
			fmt.Fprintf(stderr, "devicesim: %v\n", err)
			return 1
		}
	}
	return 0
}

// attackHelp lists the attack modes, for --help.
func attackHelp(w io.Writer) {
	fmt.Fprintf(w, "\nattack modes: %s\n", strings.Join(fleet.Attacks(), ", "))
	fmt.Fprintf(w, "  burst: after --attack-after, %d times the rate (valid records, within the gateway's default rate limit at --rate 1)\n", fleet.BurstFactor)
	fmt.Fprintf(w, "  flap: after --attack-after, drop the connection and reconnect every 2 to 4 seconds\n")
	fmt.Fprintf(w, "  fail_install: check and download each update, then report it failed (reason install)\n")
	fmt.Fprintf(w, "  both are caught only by the gateway's behaviour baselines: an anomaly event\n")
}

// parse reads --config (YAML with the fields of fleet.Config) and then the
// flags, which override it.
func parse(args []string, stdout, stderr io.Writer) (fleet.Config, string, error) {
	d := fleet.Default()
	fs := flag.NewFlagSet("devicesim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: devicesim [flags]\n       devicesim run [flags] SCENARIO.yaml\n       devicesim conform [flags]\n       devicesim bench [flags]\n       devicesim anomalies [flags]\n\nA fleet of simulated devices against the gateway. Flags override --config.\n\n")
		fs.PrintDefaults()
		attackHelp(fs.Output())
	}
	// The file holds the fields of fleet.Config and what only this command
	// does with them: the report file and verbose logging.
	file := struct {
		fleet.Config `yaml:",inline"`
		Report       string `yaml:"report"`
		Verbose      bool   `yaml:"verbose"`
	}{Config: d}
	c := &file.Config
	config := fs.String("config", "", "YAML `file` with the fields of the simulator's configuration")
	fs.StringVar(&c.PKI, "pki", c.PKI, "PKI `directory` (certs init); device certificates are issued there when missing")
	fs.StringVar(&c.Gateway, "gateway", c.Gateway, "gateway device listener `host:port`")
	fs.IntVar(&c.Devices, "devices", c.Devices, "number of devices, 1..10000")
	fs.Float64Var(&c.Rate, "rate", c.Rate, "records per second per device")
	fs.DurationVar(&c.Duration, "duration", c.Duration, "how long to run (0: until interrupted)")
	mqtt := fs.String("mqtt", "5", "MQTT version: 3 (3.1.1), 5, or mix")
	qos := fs.Uint("qos", uint(c.QoS), "QoS of telemetry: 0 or 1")
	fs.StringVar(&c.Attack, "attack", c.Attack, "attack `mode` (see below)")
	fs.IntVar(&c.Attackers, "attackers", c.Attackers, "devices that attack (0: all)")
	fs.DurationVar(&c.AttackAfter, "attack-after", c.AttackAfter, "burst, flap: behave normally this long first, past the gateway's anomaly warm-up (default 11m)")
	fs.IntVar(&c.AttackBudget, "attack-budget", c.AttackBudget, "attack messages per attacker per minute (keep under the gateway's quarantine threshold)")
	fs.Int64Var(&c.Seed, "seed", c.Seed, "physiology seed")
	fs.Float64Var(&c.Ramp, "ramp", c.Ramp, "new connections per second across the fleet")
	fs.StringVar(&c.Prefix, "prefix", c.Prefix, "device ID prefix (IDs are PREFIX-00001...)")
	fs.StringVar(&c.Key, "key", c.Key, "key type of issued device certificates: p256 or ed25519")
	cli.ListVar(fs, &c.Kinds, "kinds", "`kinds`, round-robin over the devices (repeat one to weight it)")
	fs.StringVar(&c.State, "state", c.State, "seq state `directory` (default PKI/devicesim-state; - for none)")
	fs.IntVar(&c.Buffer, "buffer", c.Buffer, "records kept per device while the gateway is away")
	fs.IntVar(&c.Window, "window", c.Window, "QoS 1 messages in flight per device")
	fs.DurationVar(&c.Drain, "drain", c.Drain, "time after --duration to send the backlog and collect acks")
	fs.BoolVar(&c.Enroll, "enroll", c.Enroll, "start from factory identities (PKI/factory/ID.crt, certs factory): enrol over EST, renew at two thirds of each certificate's lifetime")
	fs.StringVar(&c.EST, "est", c.EST, "EST server `URL` for --enroll (the gateway's --https listener)")
	fs.BoolVar(&c.Updates, "updates", c.Updates, "report model and firmware on devices/{id}/status at each connect and take update commands")
	fs.StringVar(&c.HTTPS, "https", c.HTTPS, "the gateway's HTTPS listener `host:port`: firmware downloads")
	fs.StringVar(&file.Report, "report", "", "write the final report as JSON to `file` (- for stdout)")
	check := fs.Bool("check-config", false, "validate the configuration and exit")
	fs.BoolVar(&file.Verbose, "v", false, "log connection problems (debug) on stderr")
	if err := cli.ParseConfig(fs, args, stdout, config, &file); err != nil {
		return fleet.Config{}, "", err
	}
	cfg := file.Config
	errs := protocolFlags(fs, &cfg, *mqtt, *qos)
	if err := errors.Join(append(errs, cfg.Validate())...); err != nil {
		return cfg, "", err
	}
	if file.Verbose {
		cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if *check {
		fmt.Fprintln(stderr, "devicesim: configuration ok")
		return cfg, "", flag.ErrHelp
	}
	return cfg, file.Report, nil
}

// protocolFlags applies --mqtt and --qos when given: they name their values
// as people say them, the file as fleet.Config holds them.
func protocolFlags(fs *flag.FlagSet, cfg *fleet.Config, mqtt string, qos uint) []error {
	var errs []error
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "mqtt":
			switch mqtt {
			case "3", "3.1.1":
				cfg.MQTT = fleet.MQTT3
			case "5":
				cfg.MQTT = fleet.MQTT5
			case "mix":
				cfg.MQTT = fleet.MQTTMix
			default:
				errs = append(errs, fmt.Errorf("--mqtt %q: want 3, 5 or mix", mqtt))
			}
		case "qos":
			if qos > 1 {
				errs = append(errs, fmt.Errorf("--qos %d: want 0 or 1", qos))
			}
			cfg.QoS = byte(min(qos, 1))
		}
	})
	return errs
}

// live is the one-line progress display: rewritten in place about four
// times a second on a terminal, one line every five seconds otherwise.
type live struct {
	mu      sync.Mutex // line and note come from different goroutines
	w       io.Writer
	tty     bool
	last    time.Time
	printed bool
}

func newLive(w io.Writer) *live {
	l := &live{w: w}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			l.tty = true
		}
	}
	return l
}

func (l *live) show(s fleet.Stats) { l.line(fmt.Sprint(s)) }

// line shows a progress line: in place on a terminal, every five seconds
// otherwise.
func (l *live) line(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.tty {
		fmt.Fprintf(l.w, "\r%s\033[K", s)
		l.printed = true
		return
	}
	if time.Since(l.last) >= 5*time.Second {
		l.last = time.Now()
		fmt.Fprintln(l.w, s)
	}
}

// note prints a line that stays, above the live one.
func (l *live) note(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.tty && l.printed {
		fmt.Fprintf(l.w, "\r\033[K%s\n", s)
		return
	}
	fmt.Fprintln(l.w, s)
}

func (l *live) end() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.printed {
		fmt.Fprintln(l.w)
	}
}

// summary prints the final figures.
func summary(w io.Writer, r fleet.Report) {
	s := r.Stats
	fmt.Fprintf(w, "devicesim: %d devices, %.1fs: generated %d sent %d (resent %d) acked %d duplicates %d dropped %d errors %d; p50 %.1fms p99 %.1fms\n",
		s.Devices, s.ElapsedS, s.Generated, s.Sent, s.Resent, s.Acked, s.Duplicates, s.Dropped, s.Errors, s.P50MS, s.P99MS)
	if len(s.Codes) > 0 {
		fmt.Fprintf(w, "devicesim: reason codes %s\n", kv(s.Codes))
	}
	if r.Config.Enroll {
		fmt.Fprintf(w, "devicesim: enrolments %d renewals %d enrolment errors %d\n", s.Enrolments, s.Renewals, s.EnrolErrors)
	}
	if a := r.Attack; a != nil {
		fmt.Fprintf(w, "devicesim: attack %s by %d devices: expected %s", a.Mode, a.Attackers, a.Expected)
		if a.Code != "" {
			fmt.Fprintf(w, " (%s)", a.Code)
		}
		fmt.Fprintf(w, ": %d of %d", a.Matched, a.Sent)
		if len(a.Codes) > 0 {
			fmt.Fprintf(w, "; codes %s", kv(a.Codes))
		}
		if a.Connected > 0 {
			fmt.Fprintf(w, "; %d handshakes accepted", a.Connected)
		}
		fmt.Fprintln(w)
		if a.Note != "" {
			fmt.Fprintf(w, "devicesim: note: %s\n", a.Note)
		}
	}
}

func kv(m map[string]uint64) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, k+":"+strconv.FormatUint(v, 10))
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, " ") + "}"
}

func writeReport(path string, stdout io.Writer, r fleet.Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	b = append(b, '\n')
	if path == "-" {
		_, err = stdout.Write(b)
		return err
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}
