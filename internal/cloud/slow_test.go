package cloud

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
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
	eventually(t, fmt.Sprintf("the other app gets all %d", total), func() bool { return good.distinct() == total })
	eventually(t, "the slow app disconnected and counted", func() bool {
		return gauge(t, b, `vitalgate_cloud_slow_consumers_total{kind="app"}`) == 1
	})
	if !strings.Contains(logs.String(), "slow consumer disconnected") {
		t.Fatal("no log line for the slow consumer")
	}
}
