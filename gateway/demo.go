package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"github.com/vitalgate/vitalgate/gateway/internal/demo"
	"github.com/vitalgate/vitalgate/internal/cli"
	"github.com/vitalgate/vitalgate/internal/fleet"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"
)

func demoCmd(args []string) error {
	if len(args) > 0 && args[0] == "sign" {
		return signCmd(args[1:], os.Stdout, os.Stderr)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runDemo(ctx, args, os.Stdout, isTerminal(os.Stdout))
}

// runDemo parses the demo's flags and runs it, drawing the view on out.
func runDemo(ctx context.Context, args []string, out io.Writer, terminal bool) error {
	fs := flag.NewFlagSet("gateway demo", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: gateway demo [flags]\n\nRuns a throwaway PKI, the gateway with its embedded cloud broker, a simulated fleet\n(with attackers) and a clinician view in one process, on free loopback ports.\n\nflags:")
		fs.PrintDefaults()
	}
	devices := fs.Int("devices", 12, "simulated patients' devices (round-robin over the six kinds)")
	duration := fs.Duration("duration", 0, "stop after this long (0: run until Ctrl-C)")
	attackers := fs.Int("attackers", 3, "attacking devices, each cycling through attack modes (0: none)")
	dir := fs.String("dir", "", "directory for the PKI, data and log (default: a new temporary directory; reused if it holds a PKI)")
	if err := cli.ParseFlags(fs, args, out); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("demo: unexpected argument %q", fs.Arg(0))
	}
	if *devices < 1 {
		return fmt.Errorf("demo: --devices %d: want at least 1", *devices)
	}
	if *attackers < 0 {
		return fmt.Errorf("demo: --attackers %d: want 0 or more", *attackers)
	}
	a := *attackers
	if a == 0 {
		a = -1 // demo.Options: negative means none
	}
	res, err := demo.Run(ctx, demo.Options{Devices: *devices, Attackers: a, Duration: *duration, Dir: *dir,
		Out: out, Terminal: terminal})
	if res != nil {
		summary(out, res)
	}
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	return nil
}

// summary prints where the demo's files went and how its attackers fared.
func summary(out io.Writer, r *demo.Result) {
	fmt.Fprintln(out)
	if len(r.Attacks) > 0 {
		fmt.Fprintln(out, "attack phases (MQTT 5 PUBACK reason codes as the attackers saw them):")
		ps := append([]demo.AttackPhase(nil), r.Attacks...)
		sort.SliceStable(ps, func(i, j int) bool { return ps[i].Device < ps[j].Device })
		for _, p := range ps {
			line := fmt.Sprintf("  %s %-17s %d of %d attack messages got the expected verdict", p.Device, p.Mode, p.Matched, p.Sent)
			if p.Err != "" {
				line += " (error: " + p.Err + ")"
			}
			fmt.Fprintln(out, line)
		}
	}
	fmt.Fprintf(out, "PKI:          %s\n", r.PKI)
	fmt.Fprintf(out, "data:         %s (queue.db, audit.log, cloud/)\n", r.Data)
	fmt.Fprintf(out, "gateway log:  %s\n", r.Log)
	if r.WebToken != "" {
		fmt.Fprintf(out, "web view:     token in %s (trust %s/ca.crt)\n", r.WebToken, r.PKI)
	}
	if r.AuditErr != nil {
		fmt.Fprintf(out, "audit log:    %v\n", r.AuditErr)
	} else {
		fmt.Fprintf(out, "audit log:    %d entries, chain intact (check again: go run ./gateway audit verify --data %s)\n", r.AuditEntries, r.Data)
	}
	fmt.Fprintf(out, "remove it all with: rm -r %s\n", r.Dir)
}

// signCmd is `gateway demo sign`: it writes one signed record of a simulated
// device (the payload a real device would publish) to out, for trying a
// deployment with an ordinary MQTT client such as mosquitto_pub.
func signCmd(args []string, out, errOut io.Writer) error {
	fs := flag.NewFlagSet("gateway demo sign", flag.ContinueOnError)
	fs.SetOutput(errOut)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: gateway demo sign (--pki DIR | --key FILE) --id ID [--kind KIND] --seq N > rec.cose\n\n"+
			"Writes a COSE_Sign1 telemetry record signed with devices/ID.key of the PKI directory (or the key\n"+
			"FILE of an enrolled device), measured now, to stdout.\n\nflags:")
		fs.PrintDefaults()
	}
	dir := fs.String("pki", "pki", "PKI directory holding devices/ID.key")
	id := fs.String("id", "", "device ID (the certificate's CN)")
	kind := fs.String("kind", "spo2", "record kind: spo2, bp, glucose, temp, weight or ecg")
	seq := fs.Uint64("seq", 0, "sequence number: above the last one the gateway accepted from the device")
	keyFlag := fs.String("key", "", "the device's private key `FILE` (PEM), in place of devices/ID.key")
	if err := cli.ParseFlags(fs, args, out); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("demo sign: unexpected argument %q", fs.Arg(0))
	case !pki.ValidDeviceID(*id):
		return fmt.Errorf("demo sign: --id %q: want [A-Za-z0-9._-]{1,64}", *id)
	case *seq == 0:
		return fmt.Errorf("demo sign: --seq: want a number above the device's last")
	}
	_, keyFile := pki.DevicePaths(*dir, *id)
	if *keyFlag != "" {
		keyFile = *keyFlag
	}
	key, err := pki.LoadKey(keyFile)
	if err != nil {
		return fmt.Errorf("demo sign: device key: %w", err)
	}
	dev, err := fleet.NewDevice(*id, *kind, 1)
	if err != nil {
		return fmt.Errorf("demo sign: %w", err)
	}
	dev.SetSeq(*seq - 1)
	rec := dev.Next()
	if err := telemetry.DefaultSchemas().Check(&rec); err != nil {
		return fmt.Errorf("demo sign: %w", err)
	}
	msg, err := fleet.SignRecord(key, *id, &rec)
	if err != nil {
		return fmt.Errorf("demo sign: %w", err)
	}
	if _, err := out.Write(msg); err != nil {
		return fmt.Errorf("demo sign: write: %w", err)
	}
	return nil
}

// isTerminal reports whether f is a character device (a terminal), where
// the view redraws in place with colours.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0 && os.Getenv("TERM") != "dumb"
}
