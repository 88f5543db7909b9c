package cloud

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// TestSlowAppDoesNotStallTheSite: an app subscribes to its site at QoS 1,
// without a Receive Maximum, and stops reading, with a tiny receive window.
// The gateway's publishes keep being acknowledged, another app of the site
// gets every message, and the slow app is disconnected after the write
// timeout and counted. Before the fix the deliveries to the slow app took
// its write lock, held by a write blocked on its full window, and the
// gateway's read loop stopped: no PUBACKs, and the relay reconnecting every
// few seconds.
func TestSlowAppDoesNotStallTheSite(t *testing.T) {
	dir := testPKI(t)
	cfg := testConfig(dir, "")
	cfg.AppWriteTimeout = 2 * time.Second
	// Room for the whole run in each session, so that the other app, on a
	// busy machine, is not cut off at max_inflight (a bounded queue that is
	// the subject of other tests) while it catches up.
	cfg.MaxInflight = 4096
	b, logs := startBroker(t, cfg)
	tok := mint(t, dir, "site1")

	raw, err := net.Dial("tcp", b.AppsAddr())
	if err != nil {
		t.Fatal(err)
	}
	_ = raw.(*net.TCPConn).SetReadBuffer(4096)
	cc := appTLS(t, dir)
	cc.ServerName = "localhost"
	tc := tls.Client(raw, cc)
	t.Cleanup(func() { _ = tc.Close() })
	_ = tc.SetDeadline(time.Now().Add(waitFor))
	slow := &rawClient{t: t, conn: tc, r: bufio.NewReader(tc)}
	if code, err := slow.connect("slow-app", "app", tok); err != nil || code != 0 {
		t.Fatalf("slow app connect: %#x %v", code, err)
	}
	if code, err := slow.subscribe("telemetry/site1/#"); err != nil || code != 1 {
		t.Fatalf("slow app subscribe: %#x %v", code, err)
	}
	// From here on the slow app reads nothing.

	good := dialApp5(t, b, dir, "good-app", tok, 20, true, 0)
	good.subscribe(t, "telemetry/site1/#")

	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	payload := strings.Repeat("x", 8<<10)
	const total, batch = 2000, 100
	for i := 0; i < total; i += batch {
		var last interface{ WaitTimeout(time.Duration) bool }
		for j := i; j < i+batch; j++ {
			last = gw.Publish("telemetry/site1/dev-00001/ecg", 1, false, fmt.Sprintf("%05d%s", j, payload))
		}
		if !last.WaitTimeout(waitFor) {
			t.Fatalf("publish %d not acknowledged within %s: a slow app stalled the gateway", i+batch, waitFor)
		}
	}
	// 16 MB through a Receive Maximum of 20 on a busy machine: a generous
	// bound, the wait ends as soon as the count is reached.
	testutil.Eventually(t, time.Minute, fmt.Sprintf("the other app gets all %d", total), func() bool { return good.distinct() == total })
	testutil.Eventually(t, waitFor, "the slow app disconnected and counted", func() bool {
		return gauge(t, b, `vitalgate_cloud_slow_consumers_total{kind="app"}`) == 1
	})
	if !strings.Contains(logs.String(), "slow consumer disconnected") {
		t.Fatal("no log line for the slow consumer")
	}
}

// TestTokenExpiryLosesNothing: an app with a persistent session whose token
// expires while a gateway publishes is disconnected at expiry and, back with
// a fresh token, has every message: none refused in between (deliveries to
// an expired token were refused until the sweep disconnected it, and lost to
// its session).
func TestTokenExpiryLosesNothing(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, ""))
	short, err := pki.MintToken(dir, "nurse", []string{"site1"}, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	a := dialApp5(t, b, dir, "nurse-1", short, 20, true, 3600)
	a.subscribe(t, "telemetry/site1/#")
	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	sent := 0
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); sent++ {
		wait(t, gw.Publish("telemetry/site1/dev-00001/spo2", 1, false, fmt.Sprintf("m%04d", sent)), "publish")
		time.Sleep(20 * time.Millisecond)
	}
	testutil.Eventually(t, waitFor, "the expired app disconnected", func() bool { return gauge(t, b, `vitalgate_cloud_connections{kind="app"}`) == 0 })
	before := a.distinct()
	fresh, err := pki.MintToken(dir, "nurse", []string{"site1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	back := dialApp5(t, b, dir, "nurse-1", fresh, 20, false, 3600)
	testutil.Eventually(t, waitFor, fmt.Sprintf("all %d messages received across the expiry", sent), func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		back.mu.Lock()
		defer back.mu.Unlock()
		for i := 0; i < sent; i++ {
			k := fmt.Sprintf("m%04d", i)
			if a.seen[k] == 0 && back.seen[k] == 0 {
				return false
			}
		}
		return true
	})
	if before == 0 || before == sent {
		t.Fatalf("the first connection got %d of %d: the token did not expire mid-stream", before, sent)
	}
}
