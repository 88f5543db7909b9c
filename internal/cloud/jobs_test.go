package cloud

import (
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/internal/pki"
)

func mintRole(t testing.TB, dir, sub, role string, sites ...string) string {
	t.Helper()
	tok, err := pki.MintRoleToken(dir, sub, role, sites, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestJobsTopicsACL: an operator publishes rollout jobs on jobs/{site}/{job}
// of its own sites only; a clinician (role or none) publishes nothing and
// reads neither jobs nor inventory; the
// gateway subscribes to jobs/{site}/+ of its own site, receives the retained
// job, and publishes job status and inventory of its site; apps read them.
func TestJobsTopicsACL(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, ""))
	denied := packets.ErrNotAuthorized.Code
	job := []byte(`{"v":1,"job":"j1","model":"M","version":"1.0.1","waves":[100],"abort_failures":0.5,"deadline":9999999999999}`)

	ops := connectedApp(t, b, dir, "ops", mintRole(t, dir, "ops", pki.RoleOperator, "site1"))
	for _, tc := range []struct {
		topic string
		code  byte
	}{
		{"jobs/site1/j1", 0},
		{"jobs/site2/j1", denied},          // not a site of the token
		{"jobs/site1/j1/status", denied},   // the gateway's
		{"telemetry/site1/d/spo2", denied}, // operators publish jobs only
	} {
		if code, err := ops.publishRetain(tc.topic, job, true); err != nil || code != tc.code {
			t.Errorf("operator publish %s: code %#x err %v, want %#x", tc.topic, code, err, tc.code)
		}
	}
	other := connectedApp(t, b, dir, "ops2", mintRole(t, dir, "ops2", pki.RoleOperator, "site2"))
	if code, err := other.publishRetain("jobs/site1/j9", job, true); err != nil || code != denied {
		t.Errorf("operator of site2 publish on site1: code %#x err %v, want %#x", code, err, denied)
	}
	for _, role := range []string{"", pki.RoleClinician} {
		cl := connectedApp(t, b, dir, "nurse"+role, mintRole(t, dir, "nurse"+role, role, "site1"))
		if code, err := cl.publishRetain("jobs/site1/j8", job, true); err != nil || code != denied {
			t.Errorf("app with role %q publish a job: code %#x err %v, want %#x", role, code, err, denied)
		}
		// Rollouts and inventory are the operators' (TestRoles).
		for _, f := range []string{"jobs/site1/#", "inventory/site1/#"} {
			if code, err := cl.subscribe(f); err != nil || code != denied {
				t.Errorf("app with role %q subscribe %s: code %#x err %v, want %#x", role, f, code, err, denied)
			}
		}
	}
	for _, f := range []string{"jobs/site1/#", "inventory/site1/#"} {
		if code, err := ops.subscribe(f); err != nil || code != 1 {
			t.Errorf("operator subscribe %s: code %#x err %v", f, code, err)
		}
	}

	gw, err := rawDial(t, b.GatewayAddr(), gatewayTLS(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	if code, err := gw.connect("gw1", "", ""); err != nil || code != 0 {
		t.Fatalf("gateway connect: code %#x err %v", code, err)
	}
	for _, tc := range []struct {
		topic string
		code  byte
	}{
		{"jobs/site1/j1/status", 0},
		{"jobs/site1/j1/status/dev-00001", 0},
		{"inventory/site1/dev-00001", 0},
		{"jobs/site1/j1", denied}, // a gateway never writes a job
		{"jobs/site2/j1/status", denied},
		{"jobs/site1/j1/other", denied},
		{"inventory/site2/dev-00001", denied},
		{"inventory/site1/dev-00001/x", denied},
	} {
		if code, err := gw.publishRetain(tc.topic, []byte(`{}`), true); err != nil || code != tc.code {
			t.Errorf("gateway publish %s: code %#x err %v, want %#x", tc.topic, code, err, tc.code)
		}
	}
	for _, tc := range []struct {
		filter string
		code   byte
	}{
		{"jobs/site2/+", denied},
		{"jobs/site1/#", denied},
		{"telemetry/site1/#", denied},
	} {
		if code, err := gw.subscribe(tc.filter); err != nil || code != tc.code {
			t.Errorf("gateway subscribe %q: code %#x err %v, want %#x", tc.filter, code, err, tc.code)
		}
	}

	// The gateway's subscription gets the operator's retained job.
	sub := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	in := newInbox()
	wait(t, sub.Subscribe("jobs/site1/+", 1, in.handler), "subscribe jobs")
	if m := in.next(t); m.Topic() != "jobs/site1/j1" || !m.Retained() || string(m.Payload()) != string(job) {
		t.Fatalf("got %s retained=%v %q", m.Topic(), m.Retained(), m.Payload())
	}
	if s := scrape(t, b); !strings.Contains(s, `vitalgate_cloud_acl_denied_total{action="publish",kind="app"} 6`) {
		t.Errorf("app publish denials not counted:\n%s", grepLines(s, "acl_denied"))
	}
}
