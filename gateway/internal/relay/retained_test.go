package relay_test

import (
	"slices"
	"sync"
	"testing"

	"github.com/vitalgate/vitalgate/internal/testutil"
)

// TestRelayRetainedReachesLateCloud queues certificate chains while the
// cloud is down: once it is up they arrive retained, the latest per topic,
// and only the acknowledged payload's callback runs.
func TestRelayRetainedReachesLateCloud(t *testing.T) {
	const a, b = "certs/" + site + "/dev-a", "certs/" + site + "/dev-b"
	down := startBroker(t, "127.0.0.1:0", nil, nil)
	addr := down.addr
	down.close() // the cloud is down when the relay starts
	cfg := baseConfig("tcp://" + addr)
	cfg.RetainBuffer = 2
	r := start(t, cfg, openQueue(t, nil))

	var mu sync.Mutex
	var acked []string
	ack := func(what string) func() {
		return func() { mu.Lock(); acked = append(acked, what); mu.Unlock() }
	}
	if !r.Retain(a, []byte("chain a1"), ack("a1")) || !r.Retain(b, []byte("chain b1"), ack("b1")) {
		t.Fatal("Retain refused within the buffer")
	}
	if !r.Retain(a, []byte("chain a2"), ack("a2")) {
		t.Fatal("Retain refused a newer payload of a waiting topic")
	}
	if r.Retain("certs/"+site+"/dev-c", []byte("chain c1"), ack("c1")) {
		t.Error("Retain accepted a third topic beyond RetainBuffer 2")
	}
	if got := r.metric(t, "vitalgate_relay_retained_dropped_total"); got != 1 {
		t.Errorf("retained_dropped_total = %v, want 1", got)
	}

	up := startBroker(t, addr, nil, nil)
	testutil.Eventually(t, patience, "retained messages acknowledged", func() bool { return r.Retaining() == 0 })
	mu.Lock()
	slices.Sort(acked)
	got := slices.Clone(acked)
	mu.Unlock()
	if !slices.Equal(got, []string{"a2", "b1"}) {
		t.Errorf("acknowledged %q, want [a2 b1]", got)
	}
	late := subscribe(t, up.url(), nil, "certs/#")
	testutil.Eventually(t, patience, "retained chains at a late subscriber", func() bool {
		return slices.Equal(late.payloads(a), []string{"chain a2"}) && slices.Equal(late.payloads(b), []string{"chain b1"})
	})
	for _, m := range late.messages() {
		if !m.Retained() || m.Qos() != 1 {
			t.Errorf("%s: retained %v, QoS %d", m.Topic(), m.Retained(), m.Qos())
		}
	}
}
