package relay

import (
	"sync"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// retainWindow bounds the retained publishes awaiting a PUBACK.
const retainWindow = 64

// retainedMsg is one retained publish waiting for the cloud's PUBACK.
type retainedMsg struct {
	topic   string
	payload []byte
	acked   func()
}

// retained holds the retained publishes not yet acknowledged, the latest
// one per topic.
type retained struct {
	mu      sync.Mutex
	max     int
	pending map[string]*retainedMsg
	notify  chan struct{} // capacity 1
}

func newRetained(max int) *retained {
	return &retained{max: max, pending: map[string]*retainedMsg{}, notify: make(chan struct{}, 1)}
}

// Retain queues payload for topic, QoS 1 and retained, in place of one still
// waiting for the same topic. acked, if not nil, runs on the relay's
// goroutine once the cloud has acknowledged this payload (not when a newer
// one replaced it first); it must not block. Retain never blocks: when
// [Config.RetainBuffer] other topics wait already, the message is dropped,
// vitalgate_relay_retained_dropped_total counts it and Retain reports false.
//
// Waiting messages survive reconnects (every new connection publishes them)
// but not a restart of the gateway: a caller that needs one after a restart
// queues it again.
func (r *Relay) Retain(topic string, payload []byte, acked func()) bool {
	rt := r.ret
	rt.mu.Lock()
	if _, ok := rt.pending[topic]; !ok && len(rt.pending) >= rt.max {
		rt.mu.Unlock()
		r.m.retainDroppedC.Inc()
		return false
	}
	rt.pending[topic] = &retainedMsg{topic: topic, payload: payload, acked: acked}
	rt.mu.Unlock()
	select {
	case rt.notify <- struct{}{}:
	default:
	}
	return true
}

// Retaining is the number of retained publishes waiting for the cloud.
func (r *Relay) Retaining() int {
	r.ret.mu.Lock()
	defer r.ret.mu.Unlock()
	return len(r.ret.pending)
}

// batch returns up to n waiting messages.
func (rt *retained) batch(n int) []*retainedMsg {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	out := make([]*retainedMsg, 0, min(n, len(rt.pending)))
	for _, m := range rt.pending {
		if len(out) == n {
			break
		}
		out = append(out, m)
	}
	return out
}

// settle forgets m once acknowledged, unless a newer payload replaced it,
// and reports whether it did.
func (rt *retained) settle(m *retainedMsg) bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.pending[m.topic] != m {
		return false
	}
	delete(rt.pending, m.topic)
	return true
}

// retainLoop publishes the waiting retained messages, retainWindow at a
// time, until stop. It waits for the PUBACKs of a batch until the session
// dies or abort (a graceful stop drains them); what is not acknowledged
// stays waiting for the next connection.
func (r *Relay) retainLoop(s *session, stop, abort <-chan struct{}) {
	for !done(stop) && !done(s.dead) {
		msgs := r.ret.batch(retainWindow)
		if len(msgs) == 0 {
			select {
			case <-r.ret.notify:
			case <-stop:
			case <-s.dead:
			}
			continue
		}
		toks := make([]mqtt.Token, len(msgs))
		for i, m := range msgs {
			toks[i] = s.c.Publish(m.topic, 1, true, m.payload)
		}
		for i, tok := range toks {
			select {
			case <-tok.Done():
			case <-s.dead:
				return
			case <-abort:
				return
			}
			if tok.Error() != nil {
				return // the session is failing; the next one publishes it again
			}
			if r.ret.settle(msgs[i]) && msgs[i].acked != nil {
				msgs[i].acked()
			}
		}
	}
}
