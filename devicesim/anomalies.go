package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vitalgate/vitalgate/internal/bench"
	"github.com/vitalgate/vitalgate/internal/cli"
	"github.com/vitalgate/vitalgate/internal/fleet"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// anomaliesConfig is what `devicesim anomalies` runs.
type anomaliesConfig struct {
	devices, attackers int
	duration, window   time.Duration
	warmup             time.Duration
	rate               float64
	dir, bin           string
}

// anomaliesCmd is `devicesim anomalies`: the false-positive measurement of
// the gateway's behaviour baselines. It starts a gateway (embedded cloud,
// default rate limits, the anomaly warm-up and window given) as a child
// process, runs a normal fleet beside burst and flap attackers, stops the
// gateway and counts the anomaly events of its audit log: none may be about
// a normal device, every attacker must have its own.
func anomaliesCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, err := parseAnomalies(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "devicesim anomalies: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	found, err := measureAnomalies(ctx, c, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "devicesim anomalies: %v\n", err)
		return 1
	}
	return found.report(stdout, c)
}

func parseAnomalies(args []string, helpOut io.Writer) (anomaliesConfig, error) {
	fs := flag.NewFlagSet("devicesim anomalies", flag.ContinueOnError)
	fs.SetOutput(helpOut)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: devicesim anomalies [flags]\n\nCounts the gateway's anomaly events for a normal fleet beside burst and flap attackers\n(gateway as a child process, its audit log read after). Exit status 1 if a normal device\nwas reported or an attacker was not.\n\n")
		fs.PrintDefaults()
	}
	c := anomaliesConfig{}
	fs.IntVar(&c.devices, "devices", 500, "normal devices, 1..10000")
	fs.IntVar(&c.attackers, "attackers", 2, "burst attackers, and as many flap attackers")
	fs.DurationVar(&c.duration, "duration", 10*time.Minute, "length of the run")
	fs.DurationVar(&c.window, "window", time.Minute, "the gateway's anomaly.window")
	fs.DurationVar(&c.warmup, "warmup", 2*time.Minute, "the gateway's anomaly.warmup (shortened from its default of 10m)")
	fs.Float64Var(&c.rate, "rate", 1, "records per second per device")
	fs.StringVar(&c.dir, "dir", "", "work directory for PKI and data (default: a temporary one, removed after)")
	fs.StringVar(&c.bin, "gateway-bin", "", "gateway program (default: go build it into the work directory)")
	if err := cli.ParseFlags(fs, args, helpOut); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch {
	case c.devices < 1 || c.devices > fleet.MaxDevices || c.attackers < 1:
		return c, fmt.Errorf("--devices outside 1..%d, or --attackers under 1", fleet.MaxDevices)
	case c.window < time.Second || c.warmup < c.window:
		return c, fmt.Errorf("--window under 1s, or --warmup under one window")
	case c.duration < c.attackAfter()+3*c.window:
		return c, fmt.Errorf("--duration %v: the attacks begin after %v (warm-up and two windows) and need three windows more", c.duration, c.attackAfter())
	}
	return c, nil
}

// attackAfter is when the attackers begin: the warm-up, after the first
// (partial) window and one to spare.
func (c anomaliesConfig) attackAfter() time.Duration { return c.warmup + 2*c.window }

// measureAnomalies runs the gateway and the fleets, and reads the events.
func measureAnomalies(ctx context.Context, c anomaliesConfig, progress io.Writer) (*anomalyCounts, error) {
	if c.dir == "" {
		dir, err := os.MkdirTemp("", "devicesim-anomalies-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		c.dir = dir
	}
	pkiDir, data := filepath.Join(c.dir, "pki"), filepath.Join(c.dir, "gateway")
	if err := pki.Init(pkiDir, pki.InitOptions{Site: "site1", GatewayID: "gw1"}); err != nil && !errors.Is(err, pki.ErrExists) {
		return nil, err
	}
	bin := c.bin
	if bin == "" {
		var err error
		if bin, err = bench.BuildGateway(ctx, c.dir); err != nil {
			return nil, err
		}
	}
	gw, err := bench.StartGateway(ctx, bin, bench.GatewayConfig{PKI: pkiDir, Data: data,
		MaxConnections: c.devices + 2*c.attackers + 100, AcceptRate: 1000,
		Extra: map[string]any{"embedded": map[string]any{"apps": ""},
			"anomaly": map[string]any{"window": c.window.String(), "warmup": c.warmup.String()}}})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "devicesim anomalies: gateway %s; %d normal devices, %d burst and %d flap attackers from %v, for %v\n",
		gw.DeviceAddr(), c.devices, c.attackers, c.attackers, c.attackAfter(), c.duration)
	runErr := c.runFleets(ctx, pkiDir, gw.DeviceAddr())
	if err := gw.Stop(); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if runErr != nil {
		return nil, runErr
	}
	return readAnomalies(filepath.Join(data, "audit.log"))
}

// runFleets runs the normal fleet and the two attacks side by side.
func (c anomaliesConfig) runFleets(ctx context.Context, pkiDir, addr string) error {
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, f := range []struct {
		prefix, attack string
		devices        int
	}{{"dev", "", c.devices}, {"burst", fleet.AttackBurst, c.attackers}, {"flap", fleet.AttackFlap, c.attackers}} {
		cfg := fleet.Default()
		cfg.PKI, cfg.Gateway, cfg.Prefix, cfg.Devices, cfg.Rate = pkiDir, addr, f.prefix, f.devices, c.rate
		cfg.Attack, cfg.AttackAfter, cfg.Duration = f.attack, c.attackAfter(), c.duration
		wg.Go(func() {
			if _, err := fleet.Run(ctx, cfg, nil); err != nil {
				errs[i] = fmt.Errorf("fleet %s: %w", f.prefix, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// anomalyCounts are the anomaly events of an audit log.
type anomalyCounts struct {
	// by counts them by device group (the ID's prefix: dev, burst, flap),
	// metric and device.
	by     map[string]map[string]map[string]int
	listed []string // the first maxListed, in words
}

// maxListed bounds the events the report lists.
const maxListed = 20

// readAnomalies reads the anomaly events of an audit log.
func readAnomalies(path string) (*anomalyCounts, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read audit log: %w", err)
	}
	defer f.Close()
	n := &anomalyCounts{by: map[string]map[string]map[string]int{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var line struct {
			Event struct {
				Verdict, Dev, Metric        string
				Figure, Baseline, Threshold float64
			} `json:"event"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Event.Verdict != "anomaly" {
			continue
		}
		ev := line.Event
		if len(n.listed) < maxListed {
			n.listed = append(n.listed, fmt.Sprintf("%s %s: figure %.4g, threshold %.4g, baseline %.4g", ev.Dev, ev.Metric, ev.Figure, ev.Threshold, ev.Baseline))
		}
		group, _, _ := strings.Cut(ev.Dev, "-")
		if n.by[group] == nil {
			n.by[group] = map[string]map[string]int{}
		}
		if n.by[group][ev.Metric] == nil {
			n.by[group][ev.Metric] = map[string]int{}
		}
		n.by[group][ev.Metric][ev.Dev]++
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read audit log %s: %w", path, err)
	}
	return n, nil
}

// report prints the counts and the first events, and returns the exit
// status: 0 when no normal device was reported and every attacker was, for
// its metric.
func (n *anomalyCounts) report(w io.Writer, c anomaliesConfig) int {
	status := 0
	for _, g := range []struct{ group, metric string }{{"dev", ""}, {"burst", "messages_per_minute"}, {"flap", "reconnects_per_hour"}} {
		total, lines := 0, []string{}
		for metric, devs := range n.by[g.group] {
			sum := 0
			for _, k := range devs {
				sum += k
			}
			total += sum
			lines = append(lines, fmt.Sprintf("%s %d from %d devices", metric, sum, len(devs)))
		}
		sort.Strings(lines)
		want, good := "none", total == 0
		if g.metric != "" {
			want, good = fmt.Sprintf("%s from each of %d", g.metric, c.attackers), len(n.by[g.group][g.metric]) == c.attackers
		}
		verdict := "ok"
		if !good {
			verdict, status = "FAIL", 1
		}
		fmt.Fprintf(w, "%-5s anomaly events: %d [%s] (want %s): %s\n", g.group, total, strings.Join(lines, "; "), want, verdict)
	}
	for _, l := range n.listed {
		fmt.Fprintf(w, "  %s\n", l)
	}
	return status
}
