package cloud

import (
	"errors"
	"net"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// OnSessionEstablish runs before mochi hands an existing session to the new
// connection: the app's current token decides what of the old session it may
// keep, so a token with fewer sites does not inherit other sites' queue.
func (h *authHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	id := h.get(cl)
	if id == nil || id.kind != kindApp {
		return
	}
	prev, ok := h.b.srv.Clients.Get(cl.ID)
	if !ok || prev == cl {
		return
	}
	for filter := range prev.State.Subscriptions.GetAll() {
		if !appMayRead(id, filter) {
			h.b.srv.Topics.Unsubscribe(filter, prev.ID)
			prev.State.Subscriptions.Delete(filter)
			if h.b.store != nil {
				h.b.store.OnUnsubscribed(prev, packets.Packet{Filters: packets.Subscriptions{{Filter: filter}}})
			}
		}
	}
	for _, m := range prev.State.Inflight.GetAll(false) {
		if m.FixedHeader.Type == packets.Publish && !appMayRead(id, m.TopicName) {
			if prev.State.Inflight.Delete(m.PacketID) {
				atomic.AddInt64(&h.b.srv.Info.Inflight, -1)
				if h.b.store != nil {
					h.b.store.OnQosDropped(prev, m)
				}
			}
		}
	}
}

// OnSessionEstablished counts the connection.
func (h *authHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	h.mu.Lock()
	id := h.ids[cl]
	if id != nil {
		id.counted = true
		h.b.m.connections.WithLabelValues(id.kind).Inc()
	}
	h.mu.Unlock()
	if id != nil {
		h.b.log.Info("connected", "kind", id.kind, "name", id.name, "site", id.site, "client", cl.ID, "remote", cl.Net.Remote)
	}
}

// OnDisconnect forgets the connection's identity. Sessions restored from the
// store also pass here, without an identity. A connection closed because a
// write to it made no progress within the write timeout is a slow consumer:
// counted, and logged with the reason.
func (h *authHook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	if we, ok := cl.Net.Conn.(interface{ WriteErr() error }); ok {
		var ne net.Error
		if werr := we.WriteErr(); errors.As(werr, &ne) && ne.Timeout() {
			kind, name := kindOfListener(cl.Net.Listener), ""
			if id := h.get(cl); id != nil {
				kind, name = id.kind, id.name
			}
			h.b.m.slowConsumers.WithLabelValues(kind).Inc()
			h.b.log.Warn("slow consumer disconnected: it read nothing within the write timeout",
				"kind", kind, "name", name, "client", cl.ID, "remote", cl.Net.Remote,
				"queued", cl.State.Inflight.Len())
		}
	}
	h.forget(cl, err)
}

// OnPublishDropped counts a delivery dropped for a client: its session held
// max_inflight QoS 1 messages, or its write queue was full for a QoS 0 one.
// The first drop of a connection is logged.
func (h *authHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	id := h.get(cl)
	kind, name := kindOfListener(cl.Net.Listener), ""
	if id != nil {
		kind, name = id.kind, id.name
	}
	h.b.m.deliveriesDropped.WithLabelValues(kind).Inc()
	if id == nil || !id.dropping.Swap(true) {
		h.b.log.Warn("dropping deliveries to a client that does not keep up", "kind", kind, "name", name,
			"client", cl.ID, "queued", cl.State.Inflight.Len(), "topic", clip(pk.TopicName))
	}
}

// kindOfListener is the kind of client a listener serves.
func kindOfListener(listener string) string {
	switch listener {
	case listenerGateways:
		return kindGateway
	case listenerExporter:
		return kindExporter
	}
	return kindApp
}

// forget drops the identity of cl, once: from OnDisconnect, or from the sweep
// for a client mochi stopped without calling OnDisconnect (it returns from
// its connection handler without it when the CONNACK or the resend of the
// session's inflight messages fails). Only a counted connection leaves the
// gauge.
func (h *authHook) forget(cl *mqtt.Client, err error) {
	h.mu.Lock()
	id, ok := h.ids[cl]
	delete(h.ids, cl)
	if ok && id.counted {
		h.b.m.connections.WithLabelValues(id.kind).Dec()
	}
	h.mu.Unlock()
	if !ok {
		return
	}
	if id.counted {
		h.b.log.Info("disconnected", "kind", id.kind, "name", id.name, "client", cl.ID, "error", err)
	} else {
		h.b.log.Info("connection dropped before its session was established", "kind", id.kind, "name", id.name,
			"client", cl.ID, "error", err)
	}
}

// forgetStopped forgets the identities of clients stopped for longer than
// forgetStoppedAfter (see forget).
func (h *authHook) forgetStopped(now time.Time) {
	var stale []*mqtt.Client
	h.mu.RLock()
	for cl := range h.ids {
		if t := cl.StopTime(); t != 0 && now.Sub(time.Unix(t, 0)) > forgetStoppedAfter {
			stale = append(stale, cl)
		}
	}
	h.mu.RUnlock()
	for _, cl := range stale {
		h.forget(cl, cl.StopCause())
	}
}

// sweep is the broker's periodic check: it forgets the identities of
// stopped clients, disconnects apps whose token has expired, and closes
// revoked sessions (one that connected while its list was being reloaded).
func (h *authHook) sweep(now time.Time) {
	h.forgetStopped(now)
	h.expireTokens(now)
	h.dropRevoked()
}

// expire disconnects an app whose token expired, once, without holding up
// the caller (a publisher delivering to it).
func (h *authHook) expire(cl *mqtt.Client, id *identity) {
	if id.expiring.Swap(true) {
		return
	}
	h.b.log.Info("token expired: disconnecting", "client", cl.ID, "name", id.name)
	h.b.goroutine(func() { _ = h.b.srv.DisconnectClient(cl, packets.ErrNotAuthorized) })
}

// expireTokens disconnects apps whose token has expired.
func (h *authHook) expireTokens(now time.Time) {
	var late []*mqtt.Client
	h.mu.RLock()
	for cl, id := range h.ids {
		if id.kind == kindApp && !now.Before(id.exp) {
			late = append(late, cl)
		}
	}
	h.mu.RUnlock()
	for _, cl := range late {
		if id := h.get(cl); id != nil {
			h.expire(cl, id)
		}
	}
}
