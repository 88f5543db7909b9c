package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/gateway/internal/posture"
	"github.com/vitalgate/vitalgate/internal/cli/clitest"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// TestMain lets the tests run the real command (clitest.Run).
func TestMain(m *testing.M) { clitest.Main(m, "GATEWAY_TEST_MAIN", main) }

// runMain runs the gateway command with args as a user would.
func runMain(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return clitest.Run(t, "GATEWAY_TEST_MAIN", args...)
}

// Every --help prints its usage on stdout and exits 0; the usage names
// every form of the command, the schemes the relay dials and a readable
// placeholder for --pki.
func TestHelp(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"gateway audit verify [flags]", "gateway demo [flags]", "gateway devices [flags]", "gateway demo sign [flags]",
			"-pki directory\n", "PKI directory as certs init writes it", "mqtt://", "tls://", "mqtts://"}},
		{[]string{"-h"}, []string{"gateway demo sign [flags]"}},
		{[]string{"audit", "--help"}, []string{"usage: gateway audit verify [--data DIR | --file FILE]", "usage: gateway audit [--config FILE] [--pki DIR] [--json]"}},
		{[]string{"audit", "--pki", "x", "--help"}, []string{"Exit status 0: no finding at high or critical severity; 3: at least one", "-json"}},
		{[]string{"audit", "-h"}, []string{"usage: gateway audit verify"}},
		{[]string{"audit", "verify", "--help"}, []string{"usage: gateway audit verify [--data DIR | --file FILE]", "-data", "-file"}},
		{[]string{"demo", "--help"}, []string{"usage: gateway demo [flags]", "-devices"}},
		{[]string{"devices", "--help"}, []string{"usage: gateway devices [--config FILE] [--data DIR] [--json]", "GET /devices", "-json"}},
		{[]string{"demo", "sign", "--help"}, []string{"usage: gateway demo sign", "-seq"}},
	} {
		code, stdout, stderr := runMain(t, c.args...)
		if code != 0 || stderr != "" {
			t.Errorf("gateway %v: exit %d, stderr %q; want 0 and nothing on stderr", c.args, code, stderr)
		}
		for _, w := range c.want {
			if !strings.Contains(stdout, w) {
				t.Errorf("gateway %v: usage lacks %q:\n%s", c.args, w, stdout)
			}
		}
	}
}

// `gateway audit` with an unknown subcommand fails with one line that
// shows the usage.
func TestAuditWithoutSubcommand(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"audit", "check"}, `unknown subcommand "check"`},
	} {
		code, stdout, stderr := runMain(t, c.args...)
		if code != 1 || stdout != "" || strings.Count(stderr, "\n") != 1 ||
			!strings.Contains(stderr, c.want) || !strings.Contains(stderr, "gateway audit verify [--data DIR | --file FILE]") {
			t.Errorf("gateway %v: exit %d, stdout %q, stderr %q; want 1 and one line with %q and the usage", c.args, code, stdout, stderr, c.want)
		}
	}
}

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
	for _, args := range [][]string{{"--check-config"}, {"--listen", "127.0.0.1:0", "--http", "", "--https", ""}} {
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
	// A misspelt key lists the valid ones, in the file's terms.
	typo := filepath.Join(t.TempDir(), "typo.yaml")
	os.WriteFile(typo, []byte("listen: 127.0.0.1:0\nrate:\n  mesages: 5\n"), 0o600)
	err = run([]string{"--check-config", "--config", typo, "--pki", dir, "--data", data})
	if err == nil || !strings.Contains(err.Error(), `line 3: unknown key "rate.mesages" (valid keys: rate.messages, rate.burst, rate.bytes, rate.byte_burst)`) ||
		strings.Contains(err.Error(), "config.") {
		t.Fatalf("misspelt nested key: %v", err)
	}
	os.WriteFile(typo, []byte("lisen: 127.0.0.1:0\n"), 0o600)
	err = run([]string{"--check-config", "--config", typo, "--pki", dir, "--data", data})
	if err == nil || !strings.Contains(err.Error(), `unknown key "lisen" (valid keys: pki, listen, cloud, data, http, https, pprof, site, id, format, log, max_payload,`) {
		t.Fatalf("misspelt key: %v", err)
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
	// One of each: "1 entry", not "1 entries".
	one := t.TempDir()
	l, err = audit.Open(filepath.Join(one, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	l.Append(audit.Event{V: 1, TS: 1, GW: "gw1", Dev: "d", Verdict: "replay", Detail: "x"})
	l.Close()
	out.Reset()
	if err := auditCmd([]string{"verify", "--data", one}, &out); err != nil || !strings.HasSuffix(out.String(), ": 1 entry, chain intact\n") {
		t.Fatalf("log of one entry: %v %q", err, out.String())
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
	if err == nil || !strings.Contains(err.Error(), "incomplete: 4 events not recorded (1 gap)") {
		t.Fatalf("log with a gap: %v", err)
	}
	if s := out.String(); strings.Contains(s, "intact") || !strings.Contains(s, "3 entries, hash chain unbroken, 1 gap:") ||
		!strings.Contains(s, "line 2: audit: 4 events lost") {
		t.Fatalf("output %q", s)
	}
}

// `gateway audit` is the posture audit of a PKI directory: exit 0 on a
// fresh one, 3 with a device certificate expiring in 3 days (printed, and
// in --json), 1 without a PKI.
func TestPostureAuditCommand(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runMain(t, "audit", "--pki", dir)
	if code != 0 || stderr != "" || !strings.Contains(stdout, "0 findings, 0 high or critical") {
		t.Fatalf("fresh PKI: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if err := pki.IssueDevice(dir, "soon", pki.P256, 3); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = runMain(t, "audit", "--pki", dir)
	if code != 3 || !strings.Contains(stdout, "high      device_cert_expiring  soon: devices/soon.crt: 3 days left") ||
		!strings.Contains(stdout, "1 finding, 1 high or critical") || stderr != "gateway: audit: 1 finding at high or critical severity\n" {
		t.Fatalf("expiring device: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	code, stdout, _ = runMain(t, "audit", "--pki", dir, "--json")
	var rep posture.Report
	if err := json.Unmarshal([]byte(stdout), &rep); code != 3 || err != nil || len(rep.Findings) != 1 || rep.Findings[0].Subject != "soon" {
		t.Fatalf("--json: exit %d, %v, %q", code, err, stdout)
	}
	code, _, stderr = runMain(t, "audit", "--pki", t.TempDir())
	if code != 1 || !strings.Contains(stderr, "no PKI in") || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("no PKI: exit %d, stderr %q", code, stderr)
	}
}

// --version names the program, its version, commit and Go version, then
// the modules it links.
func TestVersion(t *testing.T) {
	code, out, errOut := runMain(t, "--version")
	if code != 0 || !strings.HasPrefix(out, "gateway ") || !strings.Contains(out, " commit ") || !strings.Contains(out, runtime.Version()) ||
		!strings.Contains(out, "github.com/mochi-mqtt/server/v2 v") {
		t.Fatalf("gateway --version: %d\n%s\n%s", code, out, errOut)
	}
}

// healthcheck is the container's HEALTHCHECK: exit 0 on a ready /readyz,
// 1 with the reasons on a 503, 1 when nothing answers.
func TestHealthcheck(t *testing.T) {
	var notReady atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		if notReady.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(`{"ready":false,"reasons":["queue: full"]}`))
			return
		}
		w.Write([]byte(`{"ready":true}`))
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	if code, out, errOut := runMain(t, "healthcheck", "--http", addr); code != 0 || !strings.Contains(out, "ready") {
		t.Fatalf("ready: %d %q %q", code, out, errOut)
	}
	notReady.Store(true)
	if code, _, errOut := runMain(t, "healthcheck", "--http", addr); code != 1 || !strings.Contains(errOut, "not ready (503 Service Unavailable)") || !strings.Contains(errOut, "queue: full") {
		t.Fatalf("not ready: %d %q", code, errOut)
	}
	srv.Close()
	if code, _, errOut := runMain(t, "healthcheck", "--http", addr, "--timeout", "2s"); code != 1 || !strings.Contains(errOut, "healthcheck:") {
		t.Fatalf("nothing listening: %d %q", code, errOut)
	}
}
