package cloud

import (
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// TestCertsTopicsACL: a gateway publishes retained certificate chains under
// certs/ (and inventory entries under inventory/) of its own site only, one
// level per device; an app (an operator for inventory) reads those of its token's sites and never
// publishes there.
func TestCertsTopicsACL(t *testing.T) {
	for _, p := range []string{"certs", "inventory"} {
		t.Run(p, func(t *testing.T) {
			dir := testPKI(t)
			b, _ := startBroker(t, testConfig(dir, ""))
			gw, err := rawDial(t, b.GatewayAddr(), gatewayTLS(t, dir))
			if err != nil {
				t.Fatal(err)
			}
			if code, err := gw.connect("gw1", "", ""); err != nil || code != 0 {
				t.Fatalf("gateway connect: code %#x err %v", code, err)
			}
			denied := packets.ErrNotAuthorized.Code
			for _, tc := range []struct {
				topic string
				code  byte
			}{
				{p + "/site1/dev-00001", 0},
				{p + "/site2/dev-00001", denied},
				{p + "/site1", denied},
				{p + "/site1/dev-00001/extra", denied},
				{p + "/site1/..", denied},
			} {
				if code, err := gw.publishRetain(tc.topic, []byte("chain of "+tc.topic), true); err != nil || code != tc.code {
					t.Errorf("gateway publish retained %s: code %#x err %v, want %#x", tc.topic, code, err, tc.code)
				}
			}

			// Inventory is for operators (TestRoles: clinicians are refused).
			tok := func() string { return mint(t, dir, "site1") }
			if p == "inventory" {
				tok = func() string { return mintRole(t, dir, "alice", pki.RoleOperator, "site1") }
			}
			app := connectedApp(t, b, dir, "app1", tok())
			for _, tc := range []struct {
				filter string
				code   byte
			}{
				{p + "/site1/#", 1},
				{p + "/site1/dev-00001", 1},
				{p + "/site2/#", denied},
				{p + "/+/dev-00001", denied},
				{p + "/#", denied},
			} {
				if code, err := app.subscribe(tc.filter); err != nil || code != tc.code {
					t.Errorf("app subscribe %q: code %#x err %v, want %#x", tc.filter, code, err, tc.code)
				}
			}
			if code, err := app.publishRetain(p+"/site1/dev-00001", []byte("forged chain"), true); err != nil || code != denied {
				t.Errorf("app publish on %s/: code %#x err %v, want %#x", p, code, err, denied)
			}

			// A later subscriber gets the gateway's retained chain, and only it.
			sub := pahoClient(t, "ssl://"+b.AppsAddr(), appTLS(t, dir), "app2", "app", tok(), true)
			in := newInbox()
			wait(t, sub.Subscribe(p+"/site1/#", 1, in.handler), "subscribe "+p)
			m := in.next(t)
			if m.Topic() != p+"/site1/dev-00001" || !m.Retained() || string(m.Payload()) != "chain of "+p+"/site1/dev-00001" {
				t.Fatalf("got %s retained=%v %q", m.Topic(), m.Retained(), m.Payload())
			}
			if code, _ := gw.publish(p+"/site1/probe", nil); code != 0 {
				t.Fatal("probe refused")
			}
			in.noneBefore(t, p+"/site1/probe")
			if s := scrape(t, b); !strings.Contains(s, `vitalgate_cloud_acl_denied_total{action="publish",kind="app"} 1`) {
				t.Errorf("app publish denial not counted:\n%s", grepLines(s, "acl_denied"))
			}
		})
	}
}
