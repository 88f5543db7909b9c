// Command broker is the cloud MQTT broker (docs/design.md#the-shape): mutual TLS
// for gateways, JWT for clinicians' apps, persistent sessions. It creates a
// development PKI on first start when the default ./pki has no ca.crt (any
// other --pki directory only with --dev-pki).
//
//	broker [--pki DIR] [--listen ADDR] [--apps ADDR] [--ws ADDR] [--data DIR] [--http ADDR] [--updates ADDR --repo DIR] [--web ADDR] [--config FILE] [--check-config]
//	broker --version
//	broker watch --pki DIR --token JWT --site S [--url ssl://127.0.0.1:8884]
//	broker watch --ca ca.crt --token JWT --site S [--url ssl://127.0.0.1:8884]
//	broker fhir --config FILE [--check-config]
package main

import (
	"context"
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

	"github.com/vitalgate/vitalgate/internal/cli"
	"github.com/vitalgate/vitalgate/internal/cloud"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if version.Asked(os.Args[1:]) {
		version.Get().Print(os.Stdout, "broker")
		return
	}
	switch {
	case len(os.Args) > 1 && os.Args[1] == "watch":
		err = watch(ctx, os.Args[2:], os.Stdout, os.Stderr)
	case len(os.Args) > 1 && os.Args[1] == "fhir":
		err = fhirExport(ctx, os.Args[2:], os.Stdout, os.Stderr)
	default:
		err = run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	}
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "broker: %s\n", oneLine(err))
		os.Exit(1)
	}
}

// oneLine joins a multi-line error (Validate reports every problem).
func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

// run parses flags over the config file over the defaults, then serves until
// ctx is done.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("broker", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: broker [flags]\n       broker watch (--pki DIR | --ca ca.crt) --token JWT --site S [--url URL]\n       broker fhir --config FILE [--check-config]\n\nflags:")
		fs.PrintDefaults()
	}
	d := cloud.Default()
	cfg := d
	fs.StringVar(&cfg.PKI, "pki", cfg.PKI, "PKI `directory` as certs init writes it")
	devPKI := fs.Bool("dev-pki", false, "create a throwaway development PKI in the PKI directory if it has no ca.crt (done without asking only for the default ./pki)")
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "gateways' mTLS listener")
	fs.StringVar(&cfg.Apps, "apps", cfg.Apps, "apps' TLS listener (empty: off)")
	fs.StringVar(&cfg.WS, "ws", cfg.WS, "apps' WebSocket+TLS listener (empty: off)")
	fs.StringVar(&cfg.Data, "data", cfg.Data, "directory of the persistent store (empty: nothing survives a restart)")
	fs.StringVar(&cfg.HTTP, "http", cfg.HTTP, "/metrics, /healthz, /readyz listener (empty: off)")
	fs.StringVar(&cfg.Updates, "updates", cfg.Updates, "update repository HTTPS listener for gateways, mutual TLS (empty: off)")
	fs.StringVar(&cfg.Web, "web", cfg.Web, "clinician web view HTTPS listener, needs --ws (empty: off)")
	fs.StringVar(&cfg.Repo, "repo", cfg.Repo, "update repository `directory` (metadata/, targets/) served on --updates")
	config := fs.String("config", "", "YAML config file (flags override it)")
	check := fs.Bool("check-config", false, "validate the configuration and PKI files, then exit")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	if err := cli.ParseConfig(fs, args, stdout, config, &cfg); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		lv = slog.LevelInfo // empty log_level
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv}))
	noCA, err := missingCA(cfg.PKI, d.PKI, *devPKI)
	if err != nil {
		return err
	}
	if *check {
		if noCA {
			fmt.Fprintf(stdout, "config ok; no %s in %s yet: a development PKI will be created there at start\n", pki.FileCA, cfg.PKI)
			return nil
		}
		if _, err := cloud.New(cfg, log); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "config ok")
		return nil
	}
	if noCA {
		if err := pki.Init(cfg.PKI, pki.InitOptions{}); err != nil {
			return fmt.Errorf("create development PKI: %w", err)
		}
		log.Warn("created a development PKI: not for production", "dir", cfg.PKI)
	}
	// SIGHUP (systemctl reload) reads changed revocation lists at once
	// (they are polled anyway); caught before the start so it never kills.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	b, err := cloud.New(cfg, log)
	if err != nil {
		return err
	}
	if err := b.Start(); err != nil {
		return err
	}
	for done := false; !done; {
		select {
		case <-hup:
			b.Reload()
			log.Info("reloaded revocation lists")
		case <-ctx.Done():
			done = true
		}
	}
	log.Info("shutting down")
	return b.Close()
}

// missingCA reports whether the PKI directory dir lacks ca.crt, and refuses
// it then, unless it is the default directory or a development PKI was
// asked for (--dev-pki): a mistyped --pki must not start a broker that no
// gateway trusts.
func missingCA(dir, defaultDir string, devPKI bool) (bool, error) {
	_, err := os.Stat(filepath.Join(dir, pki.FileCA))
	if !errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if !devPKI && filepath.Clean(dir) != filepath.Clean(defaultDir) {
		return true, fmt.Errorf("no %s in %s: point --pki at the deployment's PKI (`certs init --dir DIR` makes one), or copy the broker's files there from the machine that holds it "+
			"(ca.crt, broker.crt, broker.key, gateway-ca.crt, gateway-crl.pem, app-token.pub, revoked-tokens); --dev-pki makes a throwaway development PKI",
			pki.FileCA, dir)
	}
	return true, nil
}

// watch runs the reference consumer ([cloud.Watch]) until ctx is done.
func watch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("broker watch", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: broker watch --pki DIR --token JWT --site S [--url URL]\n"+
			"       broker watch --ca ca.crt --token JWT --site S [--url URL]\n\n"+
			"Prints the site's telemetry as an app receives it, each record's device signature checked with the\n"+
			"certificate chains the gateways publish (with --pki, devices/ID.crt for a device with none yet).\n\nflags:")
		fs.PrintDefaults()
	}
	pkiDir := fs.String("pki", "pki", "PKI directory (ca.crt, device-ca.crt, devices/)")
	ca := fs.String("ca", "", "trust `ca.crt` alone, without the PKI directory: records are checked with the published certificate chains only")
	token := fs.String("token", "", "app `JWT` (from certs token); default $VITALGATE_TOKEN")
	site := fs.String("site", "", "site to watch")
	url := fs.String("url", "ssl://127.0.0.1:8884", "broker URL: ssl://, mqtts:// or wss://")
	id := fs.String("client-id", "", "MQTT client ID (default: random; set it with --persistent)")
	persistent := fs.Bool("persistent", false, "keep the session (and its queue) while away")
	dedup := fs.Int("dedup", 100000, "message IDs remembered to drop duplicates")
	if err := cli.ParseFlags(fs, args, stdout); err != nil {
		return err
	}
	if *token == "" {
		*token = os.Getenv("VITALGATE_TOKEN")
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("watch: unexpected argument %q", fs.Arg(0))
	case *token == "":
		return errors.New("watch: --token is required")
	case *site == "" || strings.ContainsAny(*site, "/+#"):
		return errors.New("watch: --site is required (one site name)")
	}
	if *ca != "" {
		pkiSet := false
		fs.Visit(func(f *flag.Flag) { pkiSet = pkiSet || f.Name == "pki" })
		if pkiSet {
			return errors.New("watch: --pki and --ca exclude each other (--ca trusts ca.crt alone)")
		}
		*pkiDir = ""
	}
	return cloud.Watch(ctx, cloud.WatchOptions{PKI: *pkiDir, CA: *ca, Token: *token, Site: *site, URL: *url,
		ClientID: *id, Persistent: *persistent, Dedup: *dedup}, stdout, stderr)
}

// fhirExport runs a standalone FHIR exporter ([cloud.NewFHIR]) until ctx
// is done.
func fhirExport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("broker fhir", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: broker fhir --config FILE [--check-config]\n\n"+
			"Exports the telemetry of an MQTT broker as FHIR R4: each record's transaction Bundle published on\n"+
			"fhir/{site}/{device} and/or POSTed to a FHIR server (docs/clinicians.md#fhir).\n\nflags:")
		fs.PrintDefaults()
	}
	config := fs.String("config", "", "YAML `file`: url, ca or pki, cert/key or token_file, client_id, http, fhir (required)")
	check := fs.Bool("check-config", false, "validate the configuration, then exit")
	if err := cli.ParseFlags(fs, args, stdout); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("fhir: unexpected argument %q", fs.Arg(0))
	case *config == "":
		return errors.New("fhir: --config is required")
	}
	cfg := cloud.DefaultFHIRStandalone()
	if err := cli.LoadYAML(*config, &cfg); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv}))
	runExporter, err := cloud.NewFHIR(cfg, log)
	if err != nil {
		return err
	}
	if *check {
		fmt.Fprintln(stdout, "config ok")
		return nil
	}
	return runExporter(ctx)
}
