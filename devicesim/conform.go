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
	"sync"
	"syscall"

	"github.com/vitalgate/vitalgate/internal/conform"
)

// conformCmd is `devicesim conform`: listen as a gateway would, judge the
// device that connects against the device protocol, print a pass/fail list.
// Exit status 0 when no rule failed, 1 when one did, 2 when it could not
// listen or no device connected.
func conformCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("devicesim conform", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: devicesim conform [flags]\n\nListen as a gateway would, let one device connect and publish, and report per protocol rule\nwhat its messages did. Exit status 0 when no rule failed, 1 when one did, 2 when no device connected.\n\n")
		fs.PrintDefaults()
	}
	var o conform.Options
	fs.StringVar(&o.PKI, "pki", "pki", "PKI `directory`: gateway.crt/.key for TLS, device-ca.crt and issuing-ca.crt for devices")
	fs.StringVar(&o.Listen, "listen", "127.0.0.1:8883", "`host:port` to listen on (0.0.0.0:8883 for a device on the network)")
	fs.StringVar(&o.Device, "device", "", "the device `ID` to judge (default: the first that connects)")
	fs.IntVar(&o.Messages, "messages", 10, "valid messages to acknowledge after the script")
	fs.IntVar(&o.DisconnectAfter, "disconnect-after", 5, "messages to acknowledge before dropping the connection")
	fs.DurationVar(&o.Duration, "duration", 0, "end after this at the latest (default 5m)")
	report := fs.String("report", "", "write the report as JSON to `file` (- for stdout)")
	junit := fs.String("junit", "", "write the report as JUnit XML to `file`")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "devicesim conform: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	var mu sync.Mutex // progress comes from the connections' goroutines
	say := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(stderr, "devicesim conform: %s\n", s)
	}
	o.Ready = func(addr string) { say("listening on " + addr + "; connect the device") }
	o.Log = say
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := conform.Run(ctx, o)
	mu.Lock()
	defer mu.Unlock()
	if rep == nil {
		fmt.Fprintf(stderr, "devicesim conform: %v\n", err)
		return 2
	}
	rep.WriteText(stdout)
	if werr := writeConformOutputs(rep, *report, *junit, stdout); werr != nil {
		fmt.Fprintf(stderr, "devicesim conform: %v\n", werr)
		return 2
	}
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "devicesim conform: %v\n", err)
		return 2
	case !rep.Passed():
		return 1
	}
	return 0
}

func writeConformOutputs(rep *conform.Report, report, junit string, stdout io.Writer) error {
	if junit != "" {
		f, err := os.Create(junit)
		if err != nil {
			return err
		}
		if err := rep.WriteJUnit(f); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	if report == "" {
		return nil
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if report == "-" {
		_, err = stdout.Write(b)
		return err
	}
	return os.WriteFile(report, b, 0o644)
}
