package relay

import "time"

// eventWindow bounds the events awaiting a PUBACK.
const eventWindow = 64

// PublishEvent queues one security event payload (the JSON or CBOR event of
// docs/apps.md#security-events) for security/{site}/{gw} with QoS 1. It never blocks: when
// the buffer is full the event is dropped and vitalgate_relay_events_dropped_total
// counts it (events are also kept in the audit log). Events wait in the buffer
// while the relay is disconnected. The relay keeps payload; callers must not modify it.
func (r *Relay) PublishEvent(payload []byte) {
	select {
	case r.events <- payload:
	default:
		r.m.droppedC.Inc()
	}
}

// eventLoop publishes buffered security events, at most eventWindow awaiting PUBACK.
func (r *Relay) eventLoop(s *session, stop <-chan struct{}, slots chan struct{}, pending *pipe) {
	defer pending.close()
	for acquire(slots, stop, s.dead) {
		var ev []byte
		select {
		case ev = <-r.events:
		case <-stop:
			return
		case <-s.dead:
			return
		}
		if done(stop) || done(s.dead) {
			r.rebuffer(ev)
			return
		}
		tok := s.c.Publish(r.eventTopic, 1, false, ev)
		if !pending.put(inflight{payload: ev, tok: tok}) {
			r.rebuffer(ev)
			return
		}
	}
}

// rebuffer puts an unsent event back in the buffer, or drops and counts it.
func (r *Relay) rebuffer(ev []byte) {
	select {
	case r.events <- ev:
	default:
		r.m.droppedC.Inc()
	}
}

// eventAcks settles event publishes: an event whose publish failed or was
// still unacknowledged when the session ended goes back to the buffer.
type eventAcks struct{ r *Relay }

func (e eventAcks) settle(p inflight, o outcome) bool {
	if o != acked {
		e.r.rebuffer(p.payload)
	}
	return true
}

func (eventAcks) due() <-chan time.Time { return nil }

func (eventAcks) flush() {}
