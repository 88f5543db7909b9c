package cloud

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// TestSharedSubscriptionsScopedToPrincipal: two principals of one site pick
// the same share group; each gets every message (before, the second took
// part of the first one's stream). Two sessions of one principal in a group
// share its messages between them, and unsubscribing the shared filter
// stops its deliveries.
func TestSharedSubscriptionsScopedToPrincipal(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, ""))
	token := func(sub string) string {
		tok, err := pki.MintToken(dir, sub, []string{"site1"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	const share = "$share/monitor/telemetry/site1/#"
	alice := newInbox()
	a := pahoClient(t, "ssl://"+b.AppsAddr(), appTLS(t, dir), "alice-1", "app", token("alice"), true)
	wait(t, a.Subscribe(share, 1, alice.handler), "alice subscribes")
	bob1, bob2 := newInbox(), newInbox()
	b1 := pahoClient(t, "ssl://"+b.AppsAddr(), appTLS(t, dir), "bob-1", "app", token("bob"), true)
	wait(t, b1.Subscribe(share, 1, bob1.handler), "bob-1 subscribes")
	b2 := pahoClient(t, "ssl://"+b.AppsAddr(), appTLS(t, dir), "bob-2", "app", token("bob"), true)
	wait(t, b2.Subscribe(share, 1, bob2.handler), "bob-2 subscribes")

	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	const n = 40
	for i := 0; i < n; i++ {
		wait(t, gw.Publish(fmt.Sprintf("telemetry/site1/dev-%02d/spo2", i), 1, false, "m"), "publish")
	}
	for i := 0; i < n; i++ {
		alice.next(t)
	}
	testutil.Eventually(t, waitFor, "bob's two sessions share his group's messages", func() bool { return len(bob1.ch)+len(bob2.ch) == n })

	wait(t, a.Unsubscribe(share), "alice unsubscribes")
	wait(t, a.Subscribe("telemetry/site1/probe/#", 1, alice.handler), "alice probe")
	wait(t, gw.Publish("telemetry/site1/dev-00/spo2", 1, false, "after"), "publish after")
	wait(t, gw.Publish("telemetry/site1/probe/x", 1, false, "p"), "probe")
	alice.noneBefore(t, "telemetry/site1/probe/x")
}

// TestMalformedShareNamesRefused: a share name that is empty or holds a
// wildcard, or a share without a filter, is refused as an invalid filter.
func TestMalformedShareNamesRefused(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, ""))
	app := connectedApp(t, b, dir, "app1", mint(t, dir, "site1"))
	invalid := packets.ErrTopicFilterInvalid.Code
	for _, tc := range []struct {
		filter string
		code   byte
	}{
		{"$share//telemetry/site1/#", invalid},
		{"$share/g+/telemetry/site1/#", invalid},
		{"$share/g#/telemetry/site1/#", invalid},
		{"$share/g", invalid},
		{"$share/g/", invalid},
		{"$share/ok/telemetry/site1/#", 1},
	} {
		if code, err := app.subscribe(tc.filter); err != nil || code != tc.code {
			t.Errorf("subscribe %q: code %#x err %v, want %#x", tc.filter, code, err, tc.code)
		}
	}
	if !strings.Contains(scrape(t, b), `vitalgate_cloud_acl_denied_total{action="subscribe",kind="app"} 5`) {
		t.Errorf("malformed shares not counted:\n%s", grepLines(scrape(t, b), "acl_denied"))
	}
}
