package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/vitalgate/vitalgate/devicesim/sim"
)

// runCmd is `devicesim run FILE`: a scenario with its expectations. Exit
// status 0 when every expectation holds, 1 when one fails, 2 on a bad file,
// an unreachable gateway, missing certificates or a failed action.
func runCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("devicesim run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: devicesim run [flags] SCENARIO.yaml\n\nRun a scenario file: phases of fleets, attacks and faults, and the outcomes each must have.\nExit status 0 when every expectation holds, 1 when one fails, 2 on a bad file or an environment\nthat does not run (unreachable gateway, missing certificates, a failed action).\n\n")
		fs.PrintDefaults()
	}
	o, f := runFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "devicesim run: want one scenario file")
		return 2
	}
	sc, err := sim.Load(fs.Arg(0))
	if err != nil {
		fmt.Fprintf(stderr, "devicesim run: %v\n", err)
		return 2
	}
	if *f.cloudURL != "" || *f.token != "" {
		c := sim.Cloud{Site: "site1"}
		if sc.Cloud != nil {
			c = *sc.Cloud
		}
		if *f.cloudURL != "" {
			c.URL = *f.cloudURL
		}
		if *f.token != "" {
			c.TokenFile = *f.token
		}
		o.Cloud = &c
	}
	if *f.check {
		fmt.Fprintf(stderr, "devicesim run: %s: ok (%d phases)\n", sc.File, len(sc.Phases))
		return 0
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	live := newLive(stderr)
	o.Progress = func(phase, fleet string, s sim.Stats) { live.line(fmt.Sprintf("%s/%s: %s", phase, fleet, s)) }
	res, runErr := sim.Run(ctx, sc, *o)
	live.end()
	for _, p := range res.Phases {
		for _, c := range p.Checks {
			mark := "ok  "
			if !c.OK {
				mark = "FAIL"
			}
			fmt.Fprintf(stderr, "%s %s\n", mark, c.Message(sc.File))
		}
	}
	if err := writeOutputs(res, runErr, *f.junit, *f.report, stdout); err != nil {
		fmt.Fprintf(stderr, "devicesim run: %v\n", err)
		return 2
	}
	switch {
	case runErr != nil:
		fmt.Fprintf(stderr, "devicesim run: %v\n", runErr)
		return 2
	case !res.Passed():
		fmt.Fprintf(stderr, "devicesim run: %s: %d of the expectations failed\n", sc.Name, len(res.Failed()))
		return 1
	}
	fmt.Fprintf(stderr, "devicesim run: %s: every expectation holds\n", sc.Name)
	return 0
}

func writeOutputs(res *sim.Result, runErr error, junit, report string, stdout io.Writer) error {
	if junit != "" {
		f, err := os.Create(junit)
		if err != nil {
			return err
		}
		if err := res.WriteJUnit(f, runErr); err != nil {
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
	b, err := json.MarshalIndent(res, "", "  ")
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

// runOutputs are the flags of `devicesim run` that are not [sim.Options].
type runOutputs struct {
	cloudURL, token, junit, report *string
	check                          *bool
}

func runFlags(fs *flag.FlagSet) (*sim.Options, runOutputs) {
	var f runOutputs
	o := &sim.Options{}
	fs.StringVar(&o.Gateway, "gateway", "", "gateway device listener `host:port` (overrides the file's)")
	fs.StringVar(&o.PKI, "pki", "", "PKI `directory` (overrides the file's)")
	fs.StringVar(&o.EST, "est", "", "EST server `URL` for fleets that enrol (overrides the file's)")
	fs.StringVar(&o.HTTPS, "https", "", "the gateway's HTTPS listener `host:port` (overrides the file's)")
	fs.StringVar(&o.Repo, "repo", "", "the update repository `directory` rollouts publish to (overrides the file's)")
	f.cloudURL = fs.String("cloud", "", "cloud broker app listener `URL` ssl://host:port (overrides the file's cloud url)")
	f.token = fs.String("token-file", "", "app token `file` at the cloud (overrides the file's cloud token_file)")
	fs.Int64Var(&o.Seed, "seed", 0, "seed of physiology and timing (0: the file's, default 1)")
	f.junit = fs.String("junit", "", "write JUnit XML to `file`")
	f.report = fs.String("report", "", "write the result as JSON to `file` (- for stdout)")
	f.check = fs.Bool("check", false, "check the file and exit")
	o.Hooks = map[string]func(context.Context) error{}
	fs.Func("hook", "`NAME=COMMAND`: run COMMAND (split at spaces, no shell) for the scenario's {hook: NAME}; repeatable", func(v string) error {
		name, command, ok := strings.Cut(v, "=")
		argv := strings.Fields(command)
		if !ok || name == "" || len(argv) == 0 {
			return errors.New("want NAME=COMMAND")
		}
		o.Hooks[name] = func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
				return fmt.Errorf("%s: %v: %s", command, err, strings.TrimSpace(string(out)))
			}
			return nil
		}
		return nil
	})
	return o, f
}
