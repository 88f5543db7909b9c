package server

import (
	"bytes"
	"context"
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/devicesim/sim"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// scenarioEnv is a gateway relaying to an outside cloud broker, with the
// options and hooks a scenario run against it needs.
func scenarioEnv(t *testing.T) (*env, sim.Options) {
	e, o := startWithOutsideCloud(t)
	o.app.c.Disconnect(10) // the scenario reads the cloud itself
	tok, err := pki.MintRoleToken(e.pki, "scenario", pki.RoleOperator, []string{"site1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(e.pki, pki.FileCA)
	cl := o.broker
	opts := sim.Options{
		Gateway: e.gw.DeviceAddr(), PKI: e.pki, HTTPS: e.gw.HTTPSAddr(),
		Cloud: &sim.Cloud{URL: "ssl://" + o.appsAddr, CA: ca, Site: "site1", Token: tok},
		Hooks: map[string]func(context.Context) error{
			"cloud_down": func(context.Context) error { return cl.Close() },
			"cloud_up": func(context.Context) error {
				cl = startCloud(t, e.pki, o.data, o.gwAddr, o.appsAddr)
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
	if err != nil || len(files) < 4 {
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
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
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
	args := []string{"run", "--gateway", e.gw.DeviceAddr(), "--pki", e.pki, "--cloud", opts.Cloud.URL, "--token-file", tokFile}
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
	test.Env = append(os.Environ(), "VITALGATE_GATEWAY="+e.gw.DeviceAddr(), "VITALGATE_PKI="+e.pki, "GOFLAGS=-mod=mod")
	if out, err := test.CombinedOutput(); err != nil || !strings.Contains(string(out), "ok") {
		t.Fatalf("outside module: %v\n%s", err, out)
	}
}
