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
	"strings"
	"syscall"
	"time"

	"github.com/vitalgate/vitalgate/internal/bench"
	"github.com/vitalgate/vitalgate/internal/cli"
)

// benchCmd is `devicesim bench`: the load harness of docs/design.md#figures.
// It starts the cloud broker and the gateway as child processes (the fleet
// and the clinician app run in this one), measures every figure in one run, shows a one-line progress on
// stderr and prints the result as one JSON line on stdout (and to --out).
func benchCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, out, err := parseBench(args, stdout)
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
	res, err := bench.Run(ctx, cfg)
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
	if out != "" {
		if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintf(stderr, "devicesim bench: write result: %v\n", err)
			return 1
		}
	}
	return 0
}

func parseBench(args []string, helpOut io.Writer) (bench.Config, string, error) {
	fs := flag.NewFlagSet("devicesim bench", flag.ContinueOnError)
	fs.SetOutput(helpOut)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: devicesim bench [flags]\n\nMeasures the gateway (docs/design.md#figures) in one run: cloud broker and gateway as\nchild processes, fleet and app in this one, temporary PKI and data. Prints one JSON line.\n\n")
		fs.PrintDefaults()
	}
	var (
		devices  = fs.Int("devices", 2000, "devices of the throughput phases, 1..10000")
		duration = fs.Duration("duration", 10*time.Second, "length of each throughput phase (peak, latency, baseline)")
		rate     = fs.Float64("rate", 0, "total msg/s of the latency phase (0: half the measured peak)")
		idle     = fs.Int("idle", 10000, "idle mTLS connections held for the memory figure (0: skip)")
		storm    = fs.Duration("storm", 5*time.Second, "length of each reconnect storm, full and resumed (0: skip)")
		workers  = fs.Int("workers", 64, "concurrent clients of the reconnect storm")
		pprof    = fs.Bool("pprof", false, "serve the gateway's /debug/pprof/ (address printed) to profile it during the run")
		window   = fs.Int("relay-window", 0, "gateway relay.window, QoS 1 messages in flight to the cloud (0: the gateway's default)")
		kinds    = fs.String("kinds", "", "record kinds, round-robin over the devices (default: all six)")
		bin      = fs.String("gateway-bin", "", "gateway program (default: go build it into the work directory)")
		brokerB  = fs.String("broker-bin", "", "cloud broker program (default: go build it into the work directory)")
		dir      = fs.String("dir", "", "work directory for PKI and data (default: a temporary one, removed after)")
		seed     = fs.Int64("seed", 1, "physiology seed")
		out      = fs.String("out", "", "also write the JSON line to `file`")
	)
	if err := cli.ParseFlags(fs, args, helpOut); err != nil {
		return bench.Config{}, "", err
	}
	if fs.NArg() > 0 {
		return bench.Config{}, "", fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	cfg := bench.Config{Devices: *devices, Duration: *duration, Rate: *rate, Idle: *idle, Storm: *storm,
		Workers: *workers, GatewayBin: *bin, BrokerBin: *brokerB, Dir: *dir, Seed: *seed, RelayWindow: *window, Pprof: *pprof}
	if *kinds != "" {
		cfg.Kinds = strings.Split(*kinds, ",")
	}
	cfg = cfg.Defaults()
	return cfg, *out, cfg.Validate()
}
