// Package scenariotest runs the simulator's example scenarios and its
// command against a real gateway and cloud broker (a package of its own, so
// its minutes run beside the server package's tests).
package scenariotest

import (
	"bytes"
	"context"
	"encoding/xml"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/devicesim/sim"
	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/gateway/internal/server"
	"github.com/vitalgate/vitalgate/internal/cloud"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
	"github.com/vitalgate/vitalgate/internal/updrepo"
)

// gw is a gateway relaying to an outside cloud broker that a hook can stop
// and start again on the same addresses.
type gw struct {
	pki, data, gwAddr, appsAddr string
	g                           *server.Gateway
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startCloud starts the cloud broker with persistent state, retrying while
// a restarted broker's port is still in TIME_WAIT.
func startCloud(t *testing.T, e *gw) *cloud.Broker {
	t.Helper()
	c := cloud.Default()
	c.PKI, c.Data, c.Listen, c.Apps, c.WS, c.HTTP = e.pki, e.data, e.gwAddr, e.appsAddr, "", ""
	b, err := cloud.New(c, quiet())
	if err != nil {
		t.Fatal(err)
	}
	var startErr error
	testutil.Eventually(t, 10*time.Second, "the cloud broker to start", func() bool {
		startErr = b.Start()
		return startErr == nil
	})
	t.Cleanup(func() { b.Close() })
	return b
}

// scenarioEnv is a PKI, a cloud broker, a gateway relaying to it, and the
// options and hooks a scenario run against them needs.
func scenarioEnv(t *testing.T) (*gw, sim.Options) {
	e := &gw{pki: t.TempDir(), data: t.TempDir(), gwAddr: freeAddr(t), appsAddr: freeAddr(t)}
	if err := pki.Init(e.pki, pki.InitOptions{Site: "site1", GatewayID: "gw1"}); err != nil {
		t.Fatal(err)
	}
	// renewal.yaml's factory identities (certs factory --prefix renew --count 4).
	if _, err := pki.IssueFactory(e.pki, pki.FactoryOptions{Count: 4, Prefix: "renew"}); err != nil {
		t.Fatal(err)
	}
	// rollout.yaml's update keys and repository (certs update-init), served
	// as a static HTTPS host would.
	repo := filepath.Join(t.TempDir(), "update-repo")
	if err := updrepo.Setup(e.pki, repo, pki.P256, time.Now()); err != nil {
		t.Fatal(err)
	}
	repoURL, stopRepo, err := updrepo.Serve(e.pki, repo, quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopRepo)
	cl := startCloud(t, e)
	c := config.Default()
	c.PKI, c.Listen, c.HTTP, c.HTTPS, c.Data = e.pki, "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", t.TempDir()
	c.Cloud = []string{"ssl://" + e.gwAddr}
	c.Enroll.Validity = time.Minute // renewal.yaml: every enrolled device renews within its phase
	c.Updates.URL = repoURL         // rollout.yaml publishes its image there during the run
	g, err := server.New(c, quiet())
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(); err != nil {
		g.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	e.g = g
	tok, err := pki.MintRoleToken(e.pki, "scenario", pki.RoleOperator, []string{"site1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	opts := sim.Options{
		Gateway: g.DeviceAddr(), PKI: e.pki, HTTPS: g.HTTPSAddr(), EST: "https://" + g.HTTPSAddr(), Repo: repo,
		Cloud: &sim.Cloud{URL: "ssl://" + e.appsAddr, CA: filepath.Join(e.pki, pki.FileCA), Site: "site1", Token: tok},
		Hooks: map[string]func(context.Context) error{
			"cloud_down": func(context.Context) error { return cl.Close() },
			"cloud_up": func(context.Context) error {
				cl = startCloud(t, e)
				return nil
			},
		},
	}
	return e, opts
}

// TestScenarioExamples runs every example scenario of devicesim/scenarios
// against a real gateway and cloud broker: each expectation must hold.
func TestScenarioExamples(t *testing.T) {
	if testing.Short() {
		t.Skip("runs each example scenario for its duration")
	}
	files, err := filepath.Glob("../../../devicesim/scenarios/*.yaml")
	if err != nil || len(files) < 6 {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			sc, err := sim.Load(f)
			if err != nil {
				t.Fatal(err)
			}
			_, opts := scenarioEnv(t)
			res, err := sim.Run(context.Background(), sc, opts)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range res.Phases {
				for _, c := range p.Checks {
					if !c.OK || testing.Verbose() {
						t.Log(c.Message(f))
					}
				}
			}
			if !res.Passed() {
				t.Fatalf("%d expectations failed", len(res.Failed()))
			}
		})
	}
}

// TestScenarioCommand: `devicesim run` exits 1 on a wrong expectation and
// names it, on stderr and in the JUnit file; exits 0 when all hold; and
// another module's tests import devicesim/sim and run against the gateway.
func TestScenarioCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds devicesim and an outside module")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command: %v", err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "devicesim")
	if out, err := exec.Command(goBin, "build", "-o", bin, "../../../devicesim").CombinedOutput(); err != nil {
		t.Fatalf("build devicesim: %v\n%s", err, out)
	}
	e, opts := scenarioEnv(t)
	tokFile := filepath.Join(dir, "operator.token")
	if err := os.WriteFile(tokFile, []byte(opts.Cloud.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	smoke, err := os.ReadFile("../../../devicesim/scenarios/smoke.yaml")
	if err != nil {
		t.Fatal(err)
	}
	wrong := filepath.Join(dir, "wrong.yaml")
	// A deliberately wrong expectation: more records than 6 devices make.
	b := bytes.Replace(smoke, []byte(`acked: ">= 30"`), []byte(`acked: "> 1000000"`), 1)
	if err := os.WriteFile(wrong, b, 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"run", "--gateway", e.g.DeviceAddr(), "--pki", e.pki, "--cloud", opts.Cloud.URL, "--token-file", tokFile}
	junit := filepath.Join(dir, "junit.xml")
	cmd := exec.Command(bin, append(args, "--junit", junit, wrong)...)
	out, err := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), `FAIL `+wrong+`:16: phase "steady": acked > 1000000: failed, got`) {
		t.Fatalf("wrong expectation: exit %d (%v)\n%s", code, err, out)
	}
	var doc struct {
		Failures int `xml:"failures,attr"`
		Tests    int `xml:"tests,attr"`
	}
	if x, err := os.ReadFile(junit); err != nil || xml.Unmarshal(x, &doc) != nil || doc.Failures != 1 || doc.Tests != 6 {
		t.Fatalf("junit: %+v %v\n%s", doc, err, x)
	}
	// The example as it is passes; a bad file exits 2.
	cmd = exec.Command(bin, append(args, "../../../devicesim/scenarios/smoke.yaml")...)
	if out, _ := cmd.CombinedOutput(); cmd.ProcessState.ExitCode() != 0 {
		t.Fatalf("smoke: exit %d\n%s", cmd.ProcessState.ExitCode(), out)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("phases:\n  - duration: 1s\n"), 0o644)
	cmd = exec.Command(bin, append(args, bad)...)
	if out, _ := cmd.CombinedOutput(); cmd.ProcessState.ExitCode() != 2 || string(out) != "devicesim run: "+bad+`:2: phase "phase 1": no fleets`+"\n" {
		t.Fatalf("bad file: exit %d %q", cmd.ProcessState.ExitCode(), out)
	}

	// Another module imports the package and runs its tests against the gateway.
	test := exec.Command(goBin, "test", "-count=1", "./...")
	test.Dir = "../../../devicesim/sim/testdata/outside"
	test.Env = append(os.Environ(), "VITALGATE_GATEWAY="+e.g.DeviceAddr(), "VITALGATE_PKI="+e.pki, "GOFLAGS=-mod=mod")
	if out, err := test.CombinedOutput(); err != nil || !strings.Contains(string(out), "ok") {
		t.Fatalf("outside module: %v\n%s", err, out)
	}
}
