package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vitalgate/vitalgate/internal/bench"
	"github.com/vitalgate/vitalgate/internal/cli"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// benchCmd is `devicesim bench`: the load harness of docs/design.md#figures.
// It starts the cloud broker, the gateway and the baselines' relays as child
// processes (the fleet and the clinician app run in this one), measures every
// figure in one run, shows a one-line progress on stderr and prints the
// result as one JSON line on stdout (and to --out).
func benchCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, opts, err := parseBench(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "devicesim bench: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	l := newLive(stderr)
	cfg.Progress = func(line string) { l.line(line) }
	cfg.Notice = func(line string) { l.note(line) }
	var runs []bench.Result
	for i := range opts.runs {
		if opts.runs > 1 {
			cfg.Progress = func(line string) { l.line(fmt.Sprintf("run %d/%d: %s", i+1, opts.runs, line)) }
		}
		cfg.CPUProfile = opts.cpuProfile
		if opts.runs > 1 && opts.cpuProfile != "" {
			cfg.CPUProfile = fmt.Sprintf("%s.%d", opts.cpuProfile, i+1)
		}
		var res bench.Result
		res, err = bench.Run(ctx, cfg)
		runs = append(runs, res)
		if err != nil {
			break
		}
		if opts.runs > 1 {
			b, _ := json.Marshal(res)
			l.note(fmt.Sprintf("run %d/%d: %s", i+1, opts.runs, b))
		}
	}
	res := bench.Summarize(runs)
	l.end()
	b, jerr := json.Marshal(res)
	if jerr != nil {
		fmt.Fprintf(stderr, "devicesim bench: %v\n", jerr)
		return 1
	}
	if err != nil {
		fmt.Fprintf(stderr, "devicesim bench: %v\npartial result: %s\n", err, b)
		return 1
	}
	fmt.Fprintf(stdout, "%s\n", b)
	if out := opts.out; out != "" {
		if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintf(stderr, "devicesim bench: write result: %v\n", err)
			return 1
		}
	}
	return 0
}

// benchOpts are the flags of `devicesim bench` outside [bench.Config].
type benchOpts struct {
	out  string // also write the JSON line there
	runs int    // whole runs, summarised as medians
	// cpuProfile is the file of the gateway's peak CPU profile (numbered per run when there are several)
	cpuProfile string
}

func parseBench(args []string, helpOut io.Writer) (bench.Config, benchOpts, error) {
	fs := flag.NewFlagSet("devicesim bench", flag.ContinueOnError)
	fs.SetOutput(helpOut)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: devicesim bench [flags]\n\nMeasures the gateway (docs/design.md#figures) in one run: cloud broker, gateway and the\nbaselines' relays (a bare mochi relay, Mosquitto with a bridge) as child\nprocesses, fleet and app in this one, temporary PKI and data. Prints one JSON line.\n\n")
		fs.PrintDefaults()
	}
	var (
		devices  = fs.Int("devices", 2000, "devices of the throughput phases, 1..10000")
		duration = fs.Duration("duration", 10*time.Second, "length of each throughput phase (peak, latency, each baseline)")
		rate     = fs.Float64("rate", 0, "total msg/s of the latency phase (0: half the measured peak)")
		idle     = fs.Int("idle", 10000, "idle mTLS connections held for the memory figure (0: skip)")
		storm    = fs.Duration("storm", 5*time.Second, "length of each reconnect storm, full and resumed (0: skip; also the storm under load, which lasts --duration)")
		workers  = fs.Int("workers", 64, "concurrent clients of the reconnect storm")
		pprof    = fs.Bool("pprof", false, "serve the gateway's /debug/pprof/ (address printed) to profile it during the run")
		window   = fs.Int("relay-window", 0, "gateway relay.window, QoS 1 messages in flight to the cloud (0: the gateway's default)")
		kinds    = fs.String("kinds", "", "record kinds, round-robin over the devices (default: all six)")
		key      = fs.String("key", "p256", "devices' key type: p256 (ES256 records) or ed25519 (EdDSA; verify-only then uses Go's crypto/ed25519, one signature at a time)")
		batch    = fs.Bool("ed25519-batch", true, "the gateway's ed25519_batch: EdDSA signatures checked in batches across devices (false: each alone)")
		bin      = fs.String("gateway-bin", "", "gateway program (default: go build it into the work directory)")
		brokerB  = fs.String("broker-bin", "", "cloud broker program (default: go build it into the work directory)")
		mosq     = fs.String("mosquitto-bin", "", "mosquitto program of the Mosquitto baseline (default: mosquitto on the PATH or in /usr/sbin; \"off\": skip it)")
		dir      = fs.String("dir", "", "work directory for PKI and data (default: a temporary one, removed after)")
		seed     = fs.Int64("seed", 1, "physiology seed")
		out      = fs.String("out", "", "also write the JSON line to `file`")
		cpuProf  = fs.String("cpuprofile", "", "write the gateway's CPU profile of each peak phase to `file` (file.N with several runs; go tool pprof -top BIN file)")
		runs     = fs.Int("runs", 3, "whole runs (new gateway, broker and fleet each); figures are their medians, with min and max")
		gwCPUs   = fs.String("gateway-cpus", "auto", "CPU list the gateway is pinned to (\"auto\": the first CPU on a machine with 2 or more, \"\": not pinned); verify-only runs there")
		hCPUs    = fs.String("harness-cpus", "auto", "CPU list of the fleet and the app (\"auto\": the CPUs the gateway does not have)")
		cCPUs    = fs.String("cloud-cpus", "auto", "CPU list of the cloud broker (\"auto\": the harness's)")
	)
	if err := cli.ParseFlags(fs, args, helpOut); err != nil {
		return bench.Config{}, benchOpts{}, err
	}
	opts := benchOpts{out: *out, runs: *runs, cpuProfile: *cpuProf}
	if fs.NArg() > 0 {
		return bench.Config{}, opts, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *runs < 1 || *runs > 20 {
		return bench.Config{}, opts, fmt.Errorf("runs: %d outside 1..20", *runs)
	}
	cfg := bench.Config{Devices: *devices, Duration: *duration, Rate: *rate, Idle: *idle, Storm: *storm,
		Workers: *workers, GatewayBin: *bin, BrokerBin: *brokerB, MosquittoBin: *mosq, Dir: *dir, Seed: *seed, RelayWindow: *window, Pprof: *pprof,
		Key: pki.KeyAlg(*key), SingleEd25519: !*batch}
	if *kinds != "" {
		cfg.Kinds = strings.Split(*kinds, ",")
	}
	if err := pinning(&cfg, *gwCPUs, *hCPUs, *cCPUs); err != nil {
		return cfg, opts, err
	}
	cfg = cfg.Defaults()
	return cfg, opts, cfg.Validate()
}

// pinning sets the CPU sets of cfg from the flags' CPU lists, "auto" being
// [bench.DefaultCPUs] of the CPUs this process may use.
func pinning(cfg *bench.Config, gw, harness, cloud string) (err error) {
	allowed := bench.AllowedCPUs()
	autoGW, autoHarness := bench.DefaultCPUs(allowed)
	set := func(dst *bench.CPUSet, s string, auto bench.CPUSet, name string) {
		if err != nil {
			return
		}
		if s == "auto" {
			*dst = auto
			return
		}
		if *dst, err = bench.ParseCPUs(s, allowed); err != nil {
			err = fmt.Errorf("%s: %w", name, err)
		}
	}
	set(&cfg.GatewayCPUs, gw, autoGW, "gateway-cpus")
	if gw != "auto" { // the harness's default is the rest
		autoHarness = nil
		for _, c := range allowed {
			if !slices.Contains(cfg.GatewayCPUs, c) {
				autoHarness = append(autoHarness, c)
			}
		}
		if len(cfg.GatewayCPUs) == 0 {
			autoHarness = nil
		}
	}
	set(&cfg.HarnessCPUs, harness, autoHarness, "harness-cpus")
	set(&cfg.CloudCPUs, cloud, cfg.HarnessCPUs, "cloud-cpus")
	return err
}
