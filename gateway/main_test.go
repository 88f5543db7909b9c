package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/internal/pki"
)

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(t.TempDir(), "data")
	if err := run([]string{"--check-config", "--pki", dir, "--data", data}); err != nil {
		t.Fatalf("valid configuration: %v", err)
	}
	cfg := filepath.Join(t.TempDir(), "gw.yaml")
	os.WriteFile(cfg, []byte("listen: nowhere\nformat: xml\n"), 0o600)
	err := run([]string{"--check-config", "--config", cfg, "--pki", dir})
	if err == nil || !strings.Contains(err.Error(), "listen:") || !strings.Contains(err.Error(), "format:") {
		t.Fatalf("bad file: %v", err)
	}
	// A flag overrides the file.
	if err := run([]string{"--check-config", "--config", cfg, "--pki", dir, "--data", data, "--listen", "127.0.0.1:0", "--format", "json"}); err != nil {
		t.Fatalf("flags over file: %v", err)
	}
	// A PKI directory without a PKI (a typo, say) is one error that says
	// how to make one, in a real start as in --check-config.
	empty := t.TempDir()
	for _, args := range [][]string{{"--check-config"}, {"--listen", "127.0.0.1:0", "--http", ""}} {
		err = run(append(args, "--pki", empty, "--data", data))
		if err == nil || !strings.Contains(err.Error(), "certs init --dir "+empty) || strings.Contains(err.Error(), "gateway-client.crt") {
			t.Fatalf("%v with an empty PKI directory: %v", args, err)
		}
	}
	os.Remove(filepath.Join(dir, pki.FileGatewayClient))
	err = run([]string{"--check-config", "--pki", dir, "--data", data})
	if err == nil || !strings.Contains(err.Error(), "gateway-client.crt") {
		t.Fatalf("PKI without gateway-client.crt: %v", err)
	}
	if err := pki.Init(dir, pki.InitOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if err := run([]string{"--bogus"}); err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "-bogus") {
		t.Fatalf("unknown flag: %q, want a one-line reason", err)
	}
	// Without --cloud the gateway starts the embedded broker: its files
	// and addresses are checked too.
	emb := filepath.Join(t.TempDir(), "emb.yaml")
	os.WriteFile(emb, []byte("embedded:\n  apps: not-an-address\n"), 0o600)
	if err := run([]string{"--check-config", "--config", emb, "--pki", dir, "--data", data}); err == nil || !strings.Contains(err.Error(), "embedded cloud broker") {
		t.Fatalf("embedded broker with a bad apps address: %v", err)
	}
	os.Remove(filepath.Join(dir, pki.FileBroker))
	if err := run([]string{"--check-config", "--pki", dir, "--data", data}); err == nil || !strings.Contains(err.Error(), "embedded cloud broker") {
		t.Fatalf("embedded broker without broker.crt: %v", err)
	}
	if err := run([]string{"--check-config", "--pki", dir, "--data", data, "--cloud", "ssl://cloud.example:8883"}); err != nil {
		t.Fatalf("an outside cloud needs no broker.crt: %v", err)
	}
	// The embedded broker binds the gateway to its certificate: another
	// site could never connect.
	if err := pki.Init(dir, pki.InitOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if err := run([]string{"--check-config", "--pki", dir, "--data", data, "--site", "elsewhere"}); err == nil || !strings.Contains(err.Error(), `site "elsewhere" differs`) {
		t.Fatalf("--site other than the certificate's: %v", err)
	}
}

func TestAuditVerifyCommand(t *testing.T) {
	data := t.TempDir()
	l, err := audit.Open(filepath.Join(data, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		l.Append(audit.Event{V: 1, TS: int64(i), GW: "gw1", Dev: "d", Verdict: "replay", Detail: "x"})
	}
	l.Close()
	var out bytes.Buffer
	if err := auditCmd([]string{"verify", "--data", data}, &out); err != nil || !strings.Contains(out.String(), "3 entries") {
		t.Fatalf("intact log: %v %q", err, out.String())
	}
	p := filepath.Join(data, "audit.log")
	b, _ := os.ReadFile(p)
	os.WriteFile(p, bytes.Replace(b, []byte(`"replay"`), []byte(`"accept"`), 1), 0o600)
	if err := auditCmd([]string{"verify", "--data", data}, &out); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("edited log: %v", err)
	}
}

// A log whose chain records a gap (events lost to a full disk) is not
// reported intact: the command lists the gap and fails.
func TestAuditVerifyGap(t *testing.T) {
	data := t.TempDir()
	l, err := audit.Open(filepath.Join(data, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	l.Append(audit.Event{V: 1, TS: 1, GW: "gw1", Dev: "d", Verdict: "replay", Detail: "x"})
	l.Append(audit.Event{V: 1, TS: 2, GW: "gw1", Verdict: "overloaded",
		Detail: "audit: 4 events lost (writes failing since 2026-01-02T03:04:05Z: no space left on device)"})
	l.Append(audit.Event{V: 1, TS: 3, GW: "gw1", Dev: "d", Verdict: "replay", Detail: "y"})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err = auditCmd([]string{"verify", "--data", data}, &out)
	if err == nil || !strings.Contains(err.Error(), "incomplete: 4 events not recorded (1 gaps)") {
		t.Fatalf("log with a gap: %v", err)
	}
	if s := out.String(); strings.Contains(s, "intact") || !strings.Contains(s, "line 2: audit: 4 events lost") {
		t.Fatalf("output %q", s)
	}
}
