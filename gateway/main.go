// Command gateway is the edge gateway: devices connect with mutual TLS and
// publish signed telemetry; the gateway verifies, guards, stores and relays
// it to the cloud at least once.
//
//	gateway [--config FILE] [--pki DIR] [--listen ADDR] [--cloud URL,...] [--data DIR] [--http ADDR] [--https ADDR] [--site S] [--id ID]
//	gateway --check-config [flags]
//	gateway --version
//	gateway healthcheck [--config FILE] [--http ADDR]
//	gateway audit [--config FILE] [--pki DIR] [--json]
//	gateway audit verify [--data DIR | --file FILE]
//	gateway devices [--config FILE] [--data DIR] [--json]
//	gateway replay reset --data DIR --id DEVICE
//	gateway demo [--devices N] [--duration D]
//	gateway demo sign --pki DIR --id ID [--kind KIND] --seq N
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/gateway/internal/posture"
	"github.com/vitalgate/vitalgate/gateway/internal/server"
	"github.com/vitalgate/vitalgate/gateway/internal/spool"
	"github.com/vitalgate/vitalgate/internal/cli"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/version"
)

func main() {
	args := os.Args[1:]
	var err error
	switch {
	case version.Asked(args):
		version.Get().Print(os.Stdout, "gateway")
	case len(args) > 0 && args[0] == "audit":
		err = auditCmd(args[1:], os.Stdout)
	case len(args) > 0 && args[0] == "devices":
		err = devicesCmd(args[1:], os.Stdout)
	case len(args) > 0 && args[0] == "replay":
		err = replayCmd(args[1:], os.Stdout)
	case len(args) > 0 && args[0] == "healthcheck":
		err = healthCmd(args[1:], os.Stdout)
	case len(args) > 0 && args[0] == "demo":
		err = demoCmd(args[1:])
	default:
		err = run(args)
	}
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	var st exitStatus
	if errors.As(err, &st) {
		fmt.Fprintln(os.Stderr, "gateway:", st.msg)
		os.Exit(st.code)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", strings.ReplaceAll(err.Error(), "\n", "; "))
		os.Exit(1)
	}
}

// parseConfig reads the defaults, then --config, then the flags that were set.
func parseConfig(args []string) (config.Config, bool, error) {
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: gateway [flags]            run the gateway\n"+
			"       gateway audit [flags]         posture audit of the PKI directory (exit 3: a high or critical finding)\n"+
			"       gateway audit verify [flags]  check the audit log's hash chain\n"+
			"       gateway devices [flags]       the device inventory: model, firmware, certificate, last seen, verdicts\n"+
			"       gateway replay reset [flags]  forget one device's last seq (stopped gateway)\n"+
			"       gateway healthcheck [flags]   exit 0 if the running gateway's /readyz says ready\n"+
			"       gateway --version             version, commit, Go version and modules\n"+
			"       gateway demo [flags]          broker, gateway, fleet and a clinician view in one process\n"+
			"       gateway demo sign [flags]     write one signed record of a simulated device to stdout\n\nflags:")
		fs.PrintDefaults()
	}
	c := config.Default()
	file := fs.String("config", "", "YAML configuration file (keys as the flags)")
	check := fs.Bool("check-config", false, "validate the configuration and the files it names, then exit")
	fs.StringVar(&c.PKI, "pki", c.PKI, "PKI `directory` as certs init writes it")
	fs.StringVar(&c.Listen, "listen", c.Listen, "device listener address (MQTT over mutual TLS)")
	cli.ListVar(fs, (*[]string)(&c.Cloud), "cloud", "cloud broker `URLs`, comma-separated, in failover order (tcp:// or mqtt://; TLS: ssl://, tls:// or mqtts://); empty: embedded broker")
	fs.StringVar(&c.Data, "data", c.Data, "directory of the queue, the audit log and the embedded broker's state")
	fs.StringVar(&c.HTTP, "http", c.HTTP, "address of /metrics, /healthz, /readyz (empty: off)")
	fs.StringVar(&c.HTTPS, "https", c.HTTPS, "address of device enrolment over EST, /.well-known/est/ (empty: off)")
	fs.StringVar(&c.Site, "site", c.Site, "site name (default: OU of gateway-client.crt)")
	fs.StringVar(&c.ID, "id", c.ID, "gateway ID (default: CN of gateway-client.crt)")
	fs.StringVar(&c.Format, "format", c.Format, "cloud payload format: cbor or json")
	fs.StringVar(&c.Log, "log", c.Log, "log level: debug, info, warn, error")
	fs.BoolVar(&c.ResetQueue, "reset-queue", false, "if the queue is refused as corrupt or lost, move it aside (queue.db.corrupt-TIME) and start an empty one; a security event records it")
	if err := cli.ParseConfig(fs, args, os.Stdout, file, &c); err != nil {
		return c, false, err
	}
	return c, *check, c.Validate()
}

func newLogger(level string, w io.Writer) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}

func run(args []string) error {
	// Signals are caught from the start: a SIGHUP (log rotation, say) that
	// arrives while the gateway is still opening its queue must not kill it.
	sig := make(chan os.Signal, 8) // a HUP then a TERM during a slow start: both kept
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sig)
	cfg, check, err := parseConfig(args)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, os.Stderr)
	if check {
		if err := server.Check(cfg); err != nil {
			return err
		}
		fmt.Println("configuration ok")
		return nil
	}
	g, err := server.New(cfg, log)
	if err != nil {
		return err
	}
	if err := g.Start(); err != nil {
		g.Close()
		return err
	}
	for s := range sig {
		if s == syscall.SIGHUP {
			if err := g.Reload(); err != nil {
				log.Error("reload", "error", err)
			} else {
				log.Info("reloaded revocation list and schemas")
			}
			continue
		}
		log.Info("shutting down", "signal", s.String())
		break
	}
	return g.Close()
}

// auditUsage is the synopsis of `gateway audit verify`.
const auditUsage = "usage: gateway audit verify [--data DIR | --file FILE]"

func auditCmd(args []string, out io.Writer) error {
	switch {
	case len(args) == 0 || strings.HasPrefix(args[0], "-") && !isHelp(args[0]):
		return postureCmd(args, out)
	case isHelp(args[0]):
		fmt.Fprintf(out, "%s\n%s\n\nThe first runs the posture audit of the PKI directory (gateway audit --pki DIR --help for its flags);\n"+
			"verify checks the audit log's hash chain and the gaps it records (gateway audit verify --help for its flags).\n", postureUsage, auditUsage)
		return flag.ErrHelp
	case args[0] != "verify":
		return fmt.Errorf("audit: unknown subcommand %q (%s, or %s)", args[0], postureUsage, auditUsage)
	}
	fs := flag.NewFlagSet("gateway audit verify", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "%s\n\nflags:\n", auditUsage)
		fs.PrintDefaults()
	}
	data := fs.String("data", config.Default().Data, "gateway data directory")
	file := fs.String("file", "", "audit log file (default: DATA/"+server.AuditFile+")")
	if err := cli.ParseFlags(fs, args[1:], out); err != nil {
		return err
	}
	path := *file
	if path == "" {
		path = filepath.Join(*data, server.AuditFile)
	}
	rep, err := audit.Check(path)
	if err != nil {
		return err // names the file (and the line)
	}
	if len(rep.Gaps) == 0 {
		fmt.Fprintf(out, "audit log %s: %s, chain intact\n", path, plural(rep.Entries, "entry", "entries"))
		return nil
	}
	// The chain is unbroken, but it records events it does not hold.
	fmt.Fprintf(out, "audit log %s: %s, hash chain unbroken, %s:\n", path, plural(rep.Entries, "entry", "entries"), plural(len(rep.Gaps), "gap", "gaps"))
	for _, g := range rep.Gaps {
		fmt.Fprintf(out, "  line %d: %s\n", g.Line, g.Detail)
	}
	return fmt.Errorf("audit log %s is incomplete: %s not recorded (%s)", path,
		plural(int(rep.Missing), "event", "events"), plural(len(rep.Gaps), "gap", "gaps"))
}

func isHelp(a string) bool { return a == "-h" || a == "-help" || a == "--help" || a == "help" }

// exitStatus is an error that main reports with its own exit status.
type exitStatus struct {
	code int
	msg  string
}

func (e exitStatus) Error() string { return e.msg }

// ExitFindings is the exit status of `gateway audit` when it finds a
// problem of high or critical severity.
const ExitFindings = 3

// postureUsage is the synopsis of the posture audit.
const postureUsage = "usage: gateway audit [--config FILE] [--pki DIR] [--json]"

// postureCmd is `gateway audit`: the posture checks of the PKI directory,
// printed one finding a line (or as JSON). It exits 0 with no finding at
// high or critical severity, 3 with one, 1 on an error. The checks of live
// connections and traffic need the running gateway's GET /audit.
func postureCmd(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("gateway audit", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "%s\n\nPosture audit of the PKI directory (stopped or running gateway): certificates and revocation lists\n"+
			"near their end, keys outside policy. Exit status 0: no finding at high or critical severity; %d: at least one; 1: an error.\n\nflags:\n", postureUsage, ExitFindings)
		fs.PrintDefaults()
	}
	c := config.Default()
	file := fs.String("config", "", "YAML configuration file of the gateway (for its pki key)")
	fs.StringVar(&c.PKI, "pki", c.PKI, "PKI `directory` as certs init writes it")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := cli.ParseConfig(fs, args, out, file, &c); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(c.PKI, pki.FileCA)); err != nil {
		return fmt.Errorf("audit: no PKI in %s: %w", c.PKI, err)
	}
	_, found := posture.CheckPKI(c.PKI, time.Now(), posture.DefaultPolicy())
	rep := posture.Report{Time: time.Now().UTC(), Findings: append([]posture.Finding{}, found...)}
	if *asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		for _, f := range rep.Findings {
			fmt.Fprintf(out, "%-8s  %-20s  %s: %s\n", f.Severity, f.Check, f.Subject, f.Detail)
		}
		fmt.Fprintf(out, "posture audit of %s: %s, %d high or critical\n", c.PKI, plural(len(rep.Findings), "finding", "findings"), rep.Serious())
	}
	if n := rep.Serious(); n > 0 {
		return exitStatus{code: ExitFindings, msg: fmt.Sprintf("audit: %s at high or critical severity", plural(n, "finding", "findings"))}
	}
	return nil
}

// plural is n with the noun in the number n asks for: "1 gap", "2 gaps".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// replayCmd is `gateway replay reset`: it forgets one device's last accepted
// seq, so that the device is judged as new at its next record. It is the
// operator's step after re-issuing the certificate of a device whose seq
// space was closed (a record signed with its stolen key jumped its seq far
// ahead). It works on a stopped gateway: the queue is locked while one runs.
func replayCmd(args []string, out io.Writer) error {
	const usage = "usage: gateway replay reset --data DIR --id DEVICE [--pki DIR]"
	if len(args) == 0 || args[0] != "reset" {
		return errors.New(usage)
	}
	fs := flag.NewFlagSet("gateway replay reset", flag.ContinueOnError)
	data := fs.String("data", config.Default().Data, "gateway data directory (of queue.db and audit.log)")
	dev := fs.String("id", "", "device ID whose replay state to reset")
	pkiDir := fs.String("pki", config.Default().PKI, "PKI directory, for the gateway ID the audit event names (optional)")
	if err := cli.ParseFlags(fs, args[1:], out); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q; %s", fs.Arg(0), usage)
	}
	if !pki.ValidDeviceID(*dev) {
		return fmt.Errorf("--id %q is not a device ID; %s", *dev, usage)
	}
	path := filepath.Join(*data, server.QueueFile)
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("no queue: %w", err) // never create one here
	}
	q, err := spool.Open(path, spool.Options{})
	if err != nil {
		return err // names the file; says so when a gateway holds it
	}
	last, _, ok := q.Last(*dev)
	if ok {
		err = q.Forget(*dev)
	}
	if cerr := q.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("device %s has no replay state in %s: nothing reset", *dev, path)
	}
	gw := ""
	if c, err := pki.LoadCert(filepath.Join(*pkiDir, pki.FileGatewayClient)); err == nil {
		_, gw = pki.ParseSiteAndID(c)
	}
	detail := fmt.Sprintf("replay state reset by the operator: last accepted seq %d forgotten; the next record is judged as the device's first", last)
	l, err := audit.Open(filepath.Join(*data, server.AuditFile))
	if err == nil {
		err = l.Append(audit.Event{V: 1, TS: time.Now().UnixMilli(), GW: gw, Dev: *dev, Verdict: server.EventReplayReset, Detail: detail})
		if cerr := l.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("replay state of %s reset, but the audit event was not written: %w", *dev, err)
	}
	fmt.Fprintf(out, "device %s: %s\n", *dev, detail)
	return nil
}
