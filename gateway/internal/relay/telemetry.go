package relay

import (
	"fmt"
	"slices"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/vitalgate/vitalgate/internal/wire"
)

const (
	// removeBatch and removeDelay bound how many acked keys wait for one Remove.
	removeBatch = 256
	removeDelay = 10 * time.Millisecond
	// pollEvery re-reads the queue even without a Notify signal.
	pollEvery = time.Second
)

// publishQoS1 is the telemetry publish: QoS 1, not retained.
func publishQoS1(c mqtt.Client, topic string, payload []byte) mqtt.Token {
	return c.Publish(topic, 1, false, payload)
}

// publishLoop publishes queue entries in key order, at most Window awaiting PUBACK.
// It starts from the oldest queued entry, so a new connection resends all that
// the previous one left unacknowledged.
func (r *Relay) publishLoop(s *session, stop <-chan struct{}, slots chan struct{}, pending *pipe) {
	defer pending.close()
	var after uint64
	poll := time.NewTimer(pollEvery)
	defer poll.Stop()
	for !done(stop) && !done(s.dead) {
		entries, err := r.q.Peek(after, r.cfg.Window)
		if err != nil {
			r.log.Error("queue peek failed", "error", err)
		}
		if err != nil || len(entries) == 0 {
			poll.Reset(pollEvery)
			select {
			case <-stop:
				return
			case <-s.dead:
				return
			case <-r.q.Notify():
			case <-poll.C:
			}
			continue
		}
		for _, e := range entries {
			if r.removingKey(e.Key) {
				after = e.Key // acknowledged on an earlier connection
				continue
			}
			topic, payload, err := wire.Unframe(e.Data)
			if err != nil {
				// Unpublishable forever: keeping it would stall the queue.
				r.log.Error("dropping malformed queue entry", "key", e.Key, "dev", e.Dev, "seq", e.Seq, "error", err)
				if err := r.q.Remove(e.Key); err != nil {
					r.log.Error("queue remove failed", "error", err)
				}
				after = e.Key
				continue
			}
			if !acquire(slots, stop, s.dead) {
				return
			}
			tok := r.publish(s.c, topic, payload)
			r.m.publishedC.Inc()
			if !pending.put(inflight{key: e.Key, tok: tok}) {
				return
			}
			after = e.Key
			if failedAlready(tok) {
				// paho fails a publish it could not hand to its writer
				// within WriteTimeout, on a connection that may still be
				// up. Later entries must not overtake it: end the session
				// now, and the next one resends from this entry.
				s.kill(fmt.Errorf("publish: %w", tok.Error()))
				return
			}
		}
	}
}

// failedAlready reports whether tok completed with an error.
func failedAlready(tok mqtt.Token) bool {
	select {
	case <-tok.Done():
		return tok.Error() != nil
	default:
		return false
	}
}

// telemetryAcks settles telemetry publishes: acknowledged keys go to the
// remover in batches; a failed publish kills the session, so the next one
// resends from the oldest unacknowledged entry and no later entry overtakes
// it.
type telemetryAcks struct {
	r      *Relay
	s      *session
	keys   []uint64 // acknowledged, not yet handed to the remover
	timer  *time.Timer
	flushC <-chan time.Time // timer.C while keys wait for it, else nil
}

func newTelemetryAcks(r *Relay, s *session) *telemetryAcks {
	t := &telemetryAcks{r: r, s: s, timer: time.NewTimer(time.Hour)}
	t.timer.Stop()
	return t
}

func (t *telemetryAcks) settle(p inflight, o outcome) bool {
	switch o {
	case acked:
		t.r.m.ackedC.Inc()
		t.keys = append(t.keys, p.key)
		if len(t.keys) >= removeBatch {
			t.flush()
		} else if t.flushC == nil {
			t.timer.Reset(removeDelay)
			t.flushC = t.timer.C
		}
	case failed:
		t.s.kill(fmt.Errorf("publish: %w", p.tok.Error()))
		return false
	}
	return true
}

func (t *telemetryAcks) due() <-chan time.Time { return t.flushC }

// flush hands the acknowledged keys to the remover, marking them as being
// removed so that a new connection does not send them again.
func (t *telemetryAcks) flush() {
	t.flushC = nil
	t.timer.Stop()
	if len(t.keys) == 0 {
		return
	}
	batch := slices.Clone(t.keys)
	t.keys = t.keys[:0]
	r := t.r
	r.rmMu.Lock()
	for _, k := range batch {
		r.removing[k] = struct{}{}
	}
	r.rmMu.Unlock()
	select {
	case r.removals <- batch:
	default: // the remover is far behind: wait for it here
		r.remove(batch)
	}
}

// removeLoop removes acknowledged entries, merging what has piled up into
// one Remove. After quit it removes what is still buffered and returns.
func (r *Relay) removeLoop(quit <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	var keys []uint64
	gather := func() {
		for len(keys) < 16*removeBatch {
			select {
			case b := <-r.removals:
				keys = append(keys, b...)
			default:
				return
			}
		}
	}
	for {
		select {
		case b := <-r.removals:
			keys = append(keys[:0], b...)
			gather()
			r.remove(keys)
		case <-quit:
			keys = keys[:0]
			gather()
			for len(keys) > 0 {
				r.remove(keys)
				keys = keys[:0]
				gather()
			}
			return
		}
	}
}

// remove deletes acknowledged entries from the queue. If that fails they
// stay queued and are sent again: a duplicate, never a loss.
func (r *Relay) remove(keys []uint64) {
	if err := r.q.Remove(keys...); err != nil {
		r.log.Error("queue remove failed; entries will be sent again", "error", err)
	}
	r.rmMu.Lock()
	for _, k := range keys {
		delete(r.removing, k)
	}
	r.rmMu.Unlock()
}

// removingKey reports whether k was acknowledged and awaits removal.
func (r *Relay) removingKey(k uint64) bool {
	r.rmMu.Lock()
	_, ok := r.removing[k]
	r.rmMu.Unlock()
	return ok
}
