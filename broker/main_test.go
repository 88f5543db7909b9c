package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vitalgate/vitalgate/internal/cli/clitest"
	"github.com/vitalgate/vitalgate/internal/cloud"
	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/testutil"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// syncBuf collects a run's output while the test reads it.
type syncBuf = testutil.SyncBuffer

// TestMain lets the tests run the real command (clitest.Run).
func TestMain(m *testing.M) { clitest.Main(m, "BROKER_TEST_MAIN", main) }

// broker runs the test binary as the broker command and returns its exit
// status, stdout and stderr.
func broker(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return clitest.Run(t, "BROKER_TEST_MAIN", args...)
}

// As docs/operations.md promises, a bad flag is answered with one line naming it and a
// non-zero exit, not with the whole usage; --help prints the usage and exits 0.
func TestBadFlagsOneLine(t *testing.T) {
	tests := []struct {
		args   []string
		stderr string
	}{
		{[]string{"--bogus"}, "broker: flag provided but not defined: -bogus (see broker --help)"},
		{[]string{"--pki"}, "broker: flag needs an argument: -pki (see broker --help)"},
		{[]string{"--check-config=maybe"}, `broker: invalid boolean value "maybe" for -check-config: parse error (see broker --help)`},
		{[]string{"extra"}, `broker: unexpected argument "extra" (see broker --help)`},
		{[]string{"watch", "--bogus"}, "broker: flag provided but not defined: -bogus (see broker watch --help)"},
	}
	for _, tt := range tests {
		code, stdout, stderr := broker(t, tt.args...)
		if code == 0 || stdout != "" || stderr != tt.stderr+"\n" {
			t.Errorf("broker %v: exit %d, stdout %q, stderr %q; want non-zero, nothing, %q", tt.args, code, stdout, stderr, tt.stderr)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{{[]string{"--help"}, "usage: broker [flags]"}, {[]string{"-h"}, "-pki directory"}, {[]string{"watch", "--help"}, "usage: broker watch --pki DIR"}} {
		code, stdout, stderr := broker(t, c.args...)
		if code != 0 || !strings.Contains(stdout, "-pki") || !strings.Contains(stdout, c.want) || stderr != "" {
			t.Errorf("broker %v: exit %d, stdout %q, stderr %q; want 0 and the usage with %q on stdout", c.args, code, stdout, stderr, c.want)
		}
	}
}

// TestMistypedPKIRefused: a --pki without ca.crt is an error that says what
// to do, and nothing is created there (it used to become a development PKI
// that no gateway trusts).
func TestMistypedPKIRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki-typo")
	err := run(context.Background(), []string{"--pki", dir, "--listen", "127.0.0.1:0", "--apps", "", "--ws", "", "--http", "",
		"--data", ""}, &syncBuf{}, &syncBuf{})
	if err == nil || !strings.Contains(err.Error(), "no ca.crt in "+dir) || !strings.Contains(err.Error(), "certs init --dir") ||
		!strings.Contains(err.Error(), "broker.key") || !strings.Contains(err.Error(), "--dev-pki") {
		t.Fatalf("run = %v, want an error naming ca.crt, certs init, the broker's files and --dev-pki", err)
	}
	// --check-config says the same, rather than "config ok".
	var out syncBuf
	err = run(context.Background(), []string{"--pki", dir, "--check-config"}, &out, &syncBuf{})
	if err == nil || !strings.Contains(err.Error(), "no ca.crt in "+dir) || strings.Contains(out.String(), "config ok") {
		t.Fatalf("--check-config = %v, stdout %q, want the same error", err, out.String())
	}
	if _, serr := os.Stat(dir); !errors.Is(serr, os.ErrNotExist) {
		t.Fatalf("%s was created: %v", dir, serr)
	}
}

func TestRunCreatesDevPKIAndStops(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncBuf
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--pki", dir, "--dev-pki", "--listen", "127.0.0.1:0", "--apps", "127.0.0.1:0", "--ws", "",
			"--http", "127.0.0.1:0", "--data", t.TempDir()}, &syncBuf{}, &stderr)
	}()
	testutil.Eventually(t, 15*time.Second, "broker started", func() bool { return strings.Contains(stderr.String(), "cloud broker started") })
	if _, err := os.Stat(filepath.Join(dir, pki.FileCA)); err != nil {
		t.Fatalf("no dev PKI: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after the signal")
	}
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	var out syncBuf
	if err := run(context.Background(), []string{"--pki", dir, "--check-config"}, &out, &syncBuf{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "config ok") {
		t.Fatalf("output %q", out.String())
	}
	cfgFile := filepath.Join(t.TempDir(), "broker.yaml")
	if err := os.WriteFile(cfgFile, []byte("max_packet: 10\nmax_inflight: 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := run(context.Background(), []string{"--pki", dir, "--config", cfgFile, "--listen", "bad", "--check-config"}, &out, &syncBuf{})
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, f := range []string{"max_packet", "max_inflight", "listen"} {
		if !strings.Contains(oneLine(err), f) {
			t.Errorf("error does not name %s: %v", f, err)
		}
	}
	if strings.Contains(oneLine(err), "\n") {
		t.Error("reason is not one line")
	}
	// log_level is a key too, and its flag overrides it.
	if err := os.WriteFile(cfgFile, []byte("log_level: loud\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), []string{"--pki", dir, "--config", cfgFile, "--check-config"}, &out, &syncBuf{}); err == nil || !strings.Contains(err.Error(), "log_level") {
		t.Fatalf("bad log_level: %v", err)
	}
	if err := run(context.Background(), []string{"--pki", dir, "--config", cfgFile, "--log-level", "debug", "--check-config"}, &out, &syncBuf{}); err != nil {
		t.Fatalf("--log-level over the file: %v", err)
	}
	if err := os.WriteFile(cfgFile, []byte("nosuchkey: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), []string{"--pki", dir, "--config", cfgFile, "--check-config"}, &out, &syncBuf{}); err == nil ||
		!strings.Contains(err.Error(), `unknown key "nosuchkey" (valid keys: pki, listen, apps, ws, data, http, updates, repo, max_packet,`) {
		t.Fatalf("unknown config key: %v, want it named with the valid keys", err)
	}
	// The web view: web needs ws; web_alerts names known measurements.
	if err := os.WriteFile(cfgFile, []byte("web: 127.0.0.1:0\nws: \"\"\nweb_alerts:\n  spo2: {low: 90}\n  sp02: {low: 90}\n  pulse: {low: 130, high: 120}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err = run(context.Background(), []string{"--pki", dir, "--config", cfgFile, "--check-config"}, &out, &syncBuf{})
	for _, want := range []string{"web: needs ws", "web_alerts.sp02: unknown measurement", "web_alerts.pulse: low 130 is not below high 120"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("bad web view config: %v, want %q", err, want)
		}
	}
	if err := run(context.Background(), []string{"--pki", dir, "--config", cfgFile, "--web", "", "--check-config"}, &out, &syncBuf{}); err == nil ||
		strings.Contains(err.Error(), "web: needs ws") {
		t.Errorf("--web \"\" over the file: %v, want only the web_alerts errors", err)
	}
}

func TestWatchPrintsVerifiedVitals(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := pki.IssueDevice(dir, "dev-00001", pki.P256, 0); err != nil {
		t.Fatal(err)
	}
	cfg := cloud.Default()
	cfg.PKI, cfg.Listen, cfg.Apps, cfg.WS, cfg.HTTP, cfg.Data = dir, "127.0.0.1:0", "127.0.0.1:0", "", "", ""
	b, err := cloud.New(cfg, slog.New(slog.NewTextHandler(&syncBuf{}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	tok, err := pki.MintToken(dir, "nurse", []string{"site1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuf
	done := make(chan error, 1)
	go func() {
		done <- watch(ctx, []string{"--pki", dir, "--token", tok, "--site", "site1", "--url", "ssl://" + b.AppsAddr()}, &stdout, &stderr)
	}()
	testutil.Eventually(t, 15*time.Second, "watch subscribed", func() bool { return strings.Contains(stderr.String(), "subscribed to telemetry/site1/#") })

	tc, err := pki.ClientTLS(filepath.Join(dir, pki.FileCA), filepath.Join(dir, pki.FileGatewayClient), filepath.Join(dir, pki.FileGatewayClientKey))
	if err != nil {
		t.Fatal(err)
	}
	gw := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + b.GatewayAddr()).SetClientID("gw1").SetTLSConfig(tc).SetAutoReconnect(false))
	if tk := gw.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("gateway connect: %v", tk.Error())
	}
	defer gw.Disconnect(100)
	_, keyFile := pki.DevicePaths(dir, "dev-00001")
	key, err := pki.LoadKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	publish := func(seq uint64, spo2 float64) {
		rec := telemetry.Record{V: 1, Dev: "dev-00001", Seq: seq, TS: time.Now().UnixMilli(), Kind: "spo2", Obs: []telemetry.Observation{
			{Code: "MDC_PULS_OXIM_SAT_O2", Val: telemetry.Scalar(spo2), Unit: "%"},
			{Code: "MDC_PULS_OXIM_PULS_RATE", Val: telemetry.Scalar(72), Unit: "/min"}}}
		payload, err := telemetry.Encode(&rec)
		if err != nil {
			t.Fatal(err)
		}
		sig, err := envelope.Sign(key, "dev-00001", payload)
		if err != nil {
			t.Fatal(err)
		}
		msg, err := wire.Encode(wire.CBOR, &wire.Accepted{Site: "site1", GW: "gw1", RX: time.Now().UnixMilli(),
			Rec: &rec, Raw: payload, Sig: sig})
		if err != nil {
			t.Fatal(err)
		}
		if tk := gw.Publish("telemetry/site1/dev-00001/spo2", 1, false, msg); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
			t.Fatalf("publish: %v", tk.Error())
		}
	}
	publish(1, 97)
	publish(1, 97) // a redelivery: dropped
	publish(2, 95)
	testutil.Eventually(t, 15*time.Second, "two lines", func() bool { return strings.Count(stdout.String(), "[sig ok]") >= 2 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	out := stdout.String()
	if strings.Count(out, "\n") != 2 || !strings.Contains(out, "site1 dev-00001 spo2 SpO2 97 % pulse 72 /min  [sig ok]") ||
		!strings.Contains(out, "SpO2 95 %") {
		t.Fatalf("watch output:\n%s", out)
	}
}

func TestVersion(t *testing.T) {
	code, out, errOut := broker(t, "--version")
	if code != 0 || !strings.HasPrefix(out, "broker ") || !strings.Contains(out, " commit ") || !strings.Contains(out, runtime.Version()) {
		t.Fatalf("broker --version: %d\n%s\n%s", code, out, errOut)
	}
}

func TestFHIRCheckConfig(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(t.TempDir(), "fhir.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(cfgFile, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("url: ssl://127.0.0.1:8883\npki: " + dir + "\nclient_id: fx-1\nfhir:\n  sites: [site1]\n" +
		"  patients: {site1: {dev-00001: Patient/p-1}}\n  group: fx\n")
	var out syncBuf
	if err := fhirExport(context.Background(), []string{"--config", cfgFile, "--check-config"}, &out, &syncBuf{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "config ok") {
		t.Fatalf("output %q", out.String())
	}
	// Every problem at once, each naming its key.
	write("url: http://x\nclient_id: fx-1\nfhir:\n  sites: [site1]\n  patients: {site2: {dev-00001: Observation/1}}\n" +
		"  publish: false\n  batch: 0\n  server: http://fhir.example\n")
	err := fhirExport(context.Background(), []string{"--config", cfgFile, "--check-config"}, &out, &syncBuf{})
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, f := range []string{"url", "ca:", "fhir.patients: site \"site2\"", "fhir.batch", "fhir.server", "Patient/{id}"} {
		if !strings.Contains(oneLine(err), f) {
			t.Errorf("error does not name %s: %v", f, err)
		}
	}
	// A file it names that cannot be read is an error at check time too.
	write("url: ssl://127.0.0.1:8883\npki: " + dir + "\nfhir:\n  sites: [site1]\n  server: https://fhir.example\n" +
		"  server_token_file: /nonexistent/token\n")
	if err := fhirExport(context.Background(), []string{"--config", cfgFile, "--check-config"}, &out, &syncBuf{}); err == nil ||
		!strings.Contains(err.Error(), "fhir server token") {
		t.Fatalf("missing token file: %v", err)
	}
	if err := fhirExport(context.Background(), nil, &out, &syncBuf{}); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Fatalf("no --config: %v", err)
	}
}
