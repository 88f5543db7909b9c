package relay_test

import (
	"strings"
	"sync"
	"testing"

	"github.com/vitalgate/vitalgate/gateway/internal/relay"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// got collects what a relay subscription hands on.
type got struct {
	mu   sync.Mutex
	msgs []string // "topic retained=bool payload"
}

func (g *got) handle(topic string, payload []byte, retained bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	r := "live"
	if retained {
		r = "retained"
	}
	g.msgs = append(g.msgs, topic+" "+r+" "+string(payload))
}

func (g *got) has(s string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, m := range g.msgs {
		if m == s {
			return true
		}
	}
	return false
}

func (g *got) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.msgs)
}

// TestRelaySubscriptionResubscribes: the relay's subscription takes the
// retained message at connect and live ones after it; a broker restart
// (which forgets the subscription) is followed by a new subscription on
// the next connection; a message over MaxSubscribedPayload is dropped.
func TestRelaySubscriptionResubscribes(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0", nil, nil)
	pub := subscribe(t, b.url(), nil, "unused/x")
	if tok := pub.c.Publish("jobs/site1/j1", 1, true, "first"); !tok.WaitTimeout(patience) || tok.Error() != nil {
		t.Fatal("publish retained job")
	}
	g := &got{}
	cfg := baseConfig(b.url())
	cfg.Subscriptions = []relay.Subscription{{Filter: "jobs/site1/+", Handle: g.handle}}
	r := start(t, cfg, openQueue(t, nil))
	testutil.Eventually(t, patience, "retained job at connect", func() bool { return g.has("jobs/site1/j1 retained first") })
	pub.c.Publish("jobs/site1/j2", 1, false, strings.Repeat("x", relay.MaxSubscribedPayload+1)).WaitTimeout(patience)
	pub.c.Publish("jobs/site1/j2", 1, false, "live").WaitTimeout(patience)
	testutil.Eventually(t, patience, "live job", func() bool { return g.has("jobs/site1/j2 live live") })
	if n := g.count(); n != 2 {
		t.Errorf("%d messages handed on, want 2 (the oversized one dropped)", n)
	}

	addr := b.addr
	b.close()
	testutil.Eventually(t, patience, "relay sees the broker gone", func() bool { return !r.Connected() })
	b2 := startBroker(t, addr, nil, nil)
	pub2 := subscribe(t, b2.url(), nil, "unused/x")
	if tok := pub2.c.Publish("jobs/site1/j3", 1, true, "after restart"); !tok.WaitTimeout(patience) || tok.Error() != nil {
		t.Fatal("publish retained job")
	}
	testutil.Eventually(t, patience, "job after reconnect", func() bool {
		return g.has("jobs/site1/j3 retained after restart") || g.has("jobs/site1/j3 live after restart")
	})
}

// TestRelayConfigSubscriptionNeedsHandler: a subscription without a handler
// is a configuration error that names it.
func TestRelayConfigSubscriptionNeedsHandler(t *testing.T) {
	cfg := baseConfig("tcp://127.0.0.1:1")
	cfg.Subscriptions = []relay.Subscription{{Filter: "jobs/site1/+"}}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "Subscriptions[0]") {
		t.Fatalf("Validate = %v, want an error naming Subscriptions[0]", err)
	}
}
