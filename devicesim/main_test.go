package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/bench"
	"github.com/vitalgate/vitalgate/internal/fleet"
	"github.com/vitalgate/vitalgate/internal/pki"
)

func runCLI(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(context.Background(), args, &o, &e)
	return code, o.String(), e.String()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestHelpAndBadFlags(t *testing.T) {
	// The usage goes to stdout, once (it was printed twice, on stderr).
	if code, o, e := runCLI("--help"); code != 0 || !strings.Contains(o, "-gateway host:port") || !strings.Contains(o, "bad_signature") ||
		strings.Count(o, "usage: devicesim [flags]") != 1 || e != "" {
		t.Errorf("--help: %d stdout %q stderr %q", code, o, e)
	}
	if code, o, e := runCLI("bench", "--help"); code != 0 || strings.Count(o, "usage: devicesim bench") != 1 || e != "" {
		t.Errorf("bench --help: %d stdout %q stderr %q", code, o, e)
	}
	for _, args := range [][]string{
		{"--mqtt", "4"}, {"--qos", "2"}, {"--attack", "nope"}, {"--devices", "10001"}, {"--bogus"}, {"extra"},
	} {
		code, _, e := runCLI(args...)
		if code != 2 || !strings.HasPrefix(e, "devicesim: ") && !strings.Contains(e, "flag provided but not defined") {
			t.Errorf("%v: exit %d, %q", args, code, e)
		}
	}
}

func TestMissingCertificates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nopki")
	code, _, e := runCLI("--pki", dir, "--gateway", freeAddr(t))
	if code != 2 || !strings.Contains(e, "devicesim: certificates missing: ") || strings.Count(e, "\n") != 1 {
		t.Errorf("exit %d, %q", code, e)
	}
}

func TestUnreachable(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	code, _, e := runCLI("--pki", dir, "--gateway", addr, "--devices", "3")
	if want := fmt.Sprintf("devicesim: gateway %s unreachable: connection refused\n", addr); code != 2 || e != want {
		t.Errorf("exit %d, %q, want %q", code, e, want)
	}
}

func TestConfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sim.yaml")
	yaml := "devices: 7\nrate: 2.5\nmqtt: 0\nqos: 0\nattack: replay\nkinds: [ecg, spo2]\nduration: 90s\nreport: r.json\nverbose: true\n"
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, report, err := parse([]string{"--config", path, "--devices", "9"}, &bytes.Buffer{}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if report != "r.json" || cfg.Logger == nil {
		t.Errorf("report %q, logger %v: the file's report and verbose keys were not applied", report, cfg.Logger)
	}
	if _, report, _ := parse([]string{"--config", path, "--report", "-"}, &bytes.Buffer{}, &bytes.Buffer{}); report != "-" {
		t.Errorf("--report over the file: %q", report)
	}
	if cfg.Devices != 9 || cfg.Rate != 2.5 || cfg.MQTT != fleet.MQTTMix || cfg.QoS != 0 || cfg.Attack != "replay" ||
		len(cfg.Kinds) != 2 || cfg.Duration.Seconds() != 90 {
		t.Errorf("config %+v", cfg)
	}
	if err := os.WriteFile(path, []byte("devcies: 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, e := runCLI("--config", path); code != 2 || !strings.Contains(e, "devcies") {
		t.Errorf("unknown key: exit %d, %q", code, e)
	}
	if code, _, e := runCLI("--check-config", "--devices", "5"); code != 0 || !strings.Contains(e, "ok") {
		t.Errorf("--check-config: exit %d, %q", code, e)
	}
}

func TestEnrollFlags(t *testing.T) {
	for args, want := range map[*[]string]string{
		{"--enroll", "--est", "http://127.0.0.1:8443"}: `devicesim: est: "http://127.0.0.1:8443" is not an https://host:port URL`,
		{"--enroll", "--attack", "replay"}:             `devicesim: enroll: not with attack "replay"`,
	} {
		if code, _, e := runCLI(*args...); code != 2 || !strings.Contains(e, want) {
			t.Errorf("%v: exit %d, %q, want %q", *args, code, e, want)
		}
	}
	if code, o, _ := runCLI("--help"); code != 0 || !strings.Contains(o, "-enroll") || !strings.Contains(o, "-est URL") {
		t.Errorf("--help does not show --enroll and --est: %q", o)
	}
	path := filepath.Join(t.TempDir(), "sim.yaml")
	if err := os.WriteFile(path, []byte("enroll: true\nest: https://gw.example:8443\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := parse([]string{"--config", path}, &bytes.Buffer{}, &bytes.Buffer{})
	if err != nil || !cfg.Enroll || cfg.EST != "https://gw.example:8443" {
		t.Errorf("config file: enroll %v est %q, %v", cfg.Enroll, cfg.EST, err)
	}
}

// TestEnrollWithout: a fleet that enrols says which factory identity is
// missing, and that the EST server is unreachable, before any connection.
func TestEnrollWithout(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	est := freeAddr(t)
	args := []string{"--pki", dir, "--gateway", freeAddr(t), "--devices", "2", "--enroll", "--est", "https://" + est}
	code, _, e := runCLI(args...)
	if want := "devicesim: certificates missing: factory identity of dev-00001: "; code != 2 || !strings.HasPrefix(e, want) || !strings.Contains(e, "certs factory") {
		t.Errorf("no factory identities: exit %d, %q, want %q...", code, e, want)
	}
	if _, err := pki.IssueFactory(dir, pki.FactoryOptions{Count: 2}); err != nil {
		t.Fatal(err)
	}
	code, _, e = runCLI(args...)
	if want := fmt.Sprintf("devicesim: gateway %s unreachable: connection refused\n", est); code != 2 || e != want {
		t.Errorf("EST server down: exit %d, %q, want %q", code, e, want)
	}
}

// TestConformCommand: `devicesim conform` against one of the simulator's
// own devices prints the list and exits 0; with no device, 2.
func TestConformCommand(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	type res struct {
		code   int
		stdout string
	}
	done := make(chan res, 1)
	go func() {
		code, o, _ := runCLI("conform", "--pki", dir, "--listen", addr, "--messages", "3", "--disconnect-after", "2", "--duration", "40s")
		done <- res{code, o}
	}()
	cfg := fleet.Default()
	cfg.PKI, cfg.Gateway, cfg.Devices, cfg.Rate, cfg.Duration, cfg.Updates, cfg.State = dir, addr, 1, 10, 40*time.Second, false, "-"
	ctx, cancel := context.WithCancel(context.Background())
	fdone := make(chan struct{})
	go func() {
		defer close(fdone)
		for ctx.Err() == nil { // until the listener is up
			if _, err := fleet.Run(ctx, cfg, nil); err == nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	r := <-done
	cancel()
	<-fdone
	if r.code != 0 || !strings.Contains(r.stdout, "PASS  resend_unacknowledged") || strings.Contains(r.stdout, "FAIL") {
		t.Fatalf("exit %d\n%s", r.code, r.stdout)
	}
	code, o, e := runCLI("conform", "--pki", dir, "--listen", freeAddr(t), "--duration", "100ms")
	if code != 2 || !strings.Contains(e, "no device connected") || !strings.Contains(o, "SKIP") {
		t.Fatalf("no device: exit %d %q %q", code, o, e)
	}
}

func TestVersion(t *testing.T) {
	code, out, errOut := runCLI("--version")
	if code != 0 || !strings.HasPrefix(out, "devicesim ") || !strings.Contains(out, " commit ") || !strings.Contains(out, runtime.Version()) {
		t.Fatalf("devicesim --version: %d\n%s\n%s", code, out, errOut)
	}
}

func TestParseBenchPinning(t *testing.T) {
	if len(bench.AllowedCPUs()) < 2 {
		t.Skip("needs 2 CPUs")
	}
	cfg, opts, err := parseBench([]string{"--idle", "0"}, io.Discard)
	if err != nil || opts.runs != 3 || cfg.GatewayCPUs.String() != "0" || cfg.HarnessCPUs.Overlaps(cfg.GatewayCPUs) ||
		cfg.CloudCPUs.String() != cfg.HarnessCPUs.String() {
		t.Errorf("defaults: %v, runs %d, gateway %s, harness %s, cloud %s", err, opts.runs, cfg.GatewayCPUs, cfg.HarnessCPUs, cfg.CloudCPUs)
	}
	if cfg, _, err := parseBench([]string{"--gateway-cpus", ""}, io.Discard); err != nil || cfg.GatewayCPUs != nil || cfg.HarnessCPUs != nil {
		t.Errorf("unpinned: %v, %s, %s", err, cfg.GatewayCPUs, cfg.HarnessCPUs)
	}
	for _, args := range [][]string{{"--gateway-cpus", "0", "--harness-cpus", "0"}, {"--runs", "0"}, {"--gateway-cpus", "999"}} {
		if _, _, err := parseBench(args, io.Discard); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

// The bench's bare mochi relay is a hidden subcommand: reached by name,
// refusing to start without its PKI and cloud.
func TestBenchRelayCommand(t *testing.T) {
	code, _, e := runCLI(bench.RelayCommand)
	if code != 2 || !strings.Contains(e, "usage: devicesim "+bench.RelayCommand) {
		t.Fatalf("code %d, stderr %q", code, e)
	}
	code, _, e = runCLI(bench.RelayCommand, "--pki", t.TempDir(), "--cloud", freeAddr(t))
	if code != 1 || !strings.Contains(e, "bench relay failed") {
		t.Fatalf("without a PKI: code %d, stderr %q", code, e)
	}
}

// --mosquitto-bin reaches the harness's configuration.
func TestParseBenchMosquitto(t *testing.T) {
	cfg, _, err := parseBench([]string{"--mosquitto-bin", "off"}, io.Discard)
	if err != nil || cfg.MosquittoBin != "off" {
		t.Fatalf("MosquittoBin %q, %v", cfg.MosquittoBin, err)
	}
}
