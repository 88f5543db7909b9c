package server

import (
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// With ulimit -n 1024 the default max_connections of 20000 is lowered to
// what the descriptors allow, with a warning, so a flood of half-open
// connections is refused (and counted) before it takes every descriptor.
func TestMaxConnectionsFitOpenFileLimit(t *testing.T) {
	orig := nofileLimit
	nofileLimit = func() (uint64, error) { return 1024, nil }
	t.Cleanup(func() { nofileLimit = orig })
	cfg := testConfig(t, newPKI(t))
	logs := &tailWriter{max: 200}
	g, err := New(cfg, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if got := g.devices.MaxConns(); got != 512 {
		t.Fatalf("device connection cap %d with 1024 open files, want 512", got)
	}
	if got := g.mqtt.Options.Capabilities.MaximumClients; got != 512 {
		t.Fatalf("mochi's client cap %d, want 512", got)
	}
	if s := logs.String(); !strings.Contains(s, "max_connections lowered") || !strings.Contains(s, "effective=512") {
		t.Fatalf("no warning about the lowered cap in the log:\n%s", s)
	}
}

// Half-open connections beyond max_connections are refused and counted in
// handshakes_total{result="refused"}, the series the documented alert
// watches; a device gets in once they time out.
func TestHalfOpenFloodRefused(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.MaxConnections = 3
		c.HandshakeTimeout = 2 * time.Second
	})
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 3 {
		c, err := net.Dial("tcp", e.gw.DeviceAddr())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	testutil.Eventually(t, 10*time.Second, "the half-open connections to hold every slot", func() bool {
		return e.gw.devices.Open() == 3
	})
	for i := range 5 {
		c, err := net.Dial("tcp", e.gw.DeviceAddr())
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	testutil.Eventually(t, 10*time.Second, "5 refusals counted", func() bool {
		return e.metric("vitalgate_gateway_handshakes_total", "refused") == 5
	})
	e.device("after-flood")
	testutil.Eventually(t, 20*time.Second, "a device to connect once the half-open connections timed out", func() bool {
		c, _, err := e.dial5("after-flood", "after-flood")
		return err == nil && c != nil
	})
}
