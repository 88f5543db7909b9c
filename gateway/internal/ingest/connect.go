package ingest

import (
	"crypto/x509"
	"fmt"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/subcap"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// OnConnect binds the connection to the device in its certificate and
// refuses it, with a CONNACK reason, when the client ID differs, the device
// is quarantined or revoked, or the CONNECT carries a will (mochi publishes
// wills without any check, so a will could write to any topic).
func (h *Hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	remote := cl.Net.Remote
	refuse := func(code packets.Code, v verdict.Verdict, dev, detail string) error {
		h.o.Metrics.Rejected.WithLabelValues(string(v)).Inc()
		h.emit(v, dev, detail, remote)
		_ = h.server.SendConnack(cl, code, false, nil)
		return code
	}
	if h.draining.Load() {
		_ = h.server.SendConnack(cl, packets.ErrServerShuttingDown, false, nil)
		return packets.ErrServerShuttingDown
	}
	leaf := peerCert(cl)
	if leaf == nil {
		return refuse(packets.ErrNotAuthorized, verdict.IdentityMismatch, "", "no client certificate")
	}
	id := leaf.Subject.CommonName
	if !pki.ValidDeviceID(id) {
		return refuse(packets.ErrClientIdentifierNotValid, verdict.IdentityMismatch, "", fmt.Sprintf("certificate CN %q is not a valid device ID", id))
	}
	if cl.ID != id {
		return refuse(packets.ErrClientIdentifierNotValid, verdict.IdentityMismatch, id,
			fmt.Sprintf("client ID %q differs from certificate %q", truncate(cl.ID, 80), id))
	}
	if pk.Connect.WillFlag || cl.Properties.Will.Flag != 0 {
		return refuse(packets.ErrNotAuthorized, verdict.ACLDenied, id,
			fmt.Sprintf("will messages are not accepted (will topic %q)", truncate(pk.Connect.WillTopic, 200)))
	}
	if until, q := h.o.Guard.Quarantined(id); q {
		return refuse(packets.ErrNotAuthorized, verdict.Quarantined, id,
			"connection refused: quarantined until "+until.UTC().Format(time.RFC3339))
	}
	v, err := envelope.NewVerifier(leaf.PublicKey, id, envelope.WithBatcher(h.o.Batcher))
	if err != nil {
		return refuse(packets.ErrNotAuthorized, verdict.BadSignature, id, "certificate key cannot verify records: "+err.Error())
	}
	if cl.State.Keepalive == 0 || cl.State.Keepalive > h.o.Keepalive {
		cl.State.Keepalive = h.o.Keepalive
		cl.State.ServerKeepalive = true // MQTT 5: the CONNACK tells the device
	}
	h.mu.Lock()
	h.sessions[cl] = &session{
		id: id, cert: leaf, verifier: v, remote: remote,
		topic: "devices/" + id + "/telemetry", status: "devices/" + id + "/status", cmd: "devices/" + id + "/cmd/",
	}
	h.mu.Unlock()
	h.o.Metrics.Connections.Inc()
	for _, o := range h.o.Observers {
		o.Connected(id, leaf, remote)
	}
	// mochi does not call OnDisconnect when it gives up on a client after
	// OnConnect (a failed CONNACK write, say), but it always closes the
	// connection: forget the session then.
	if c, ok := cl.Net.Conn.(*Conn); ok {
		c.OnClose(func() { h.forget(cl) })
	}
	// The session is registered before this check, so a CRL reload that
	// happened since the handshake is seen either here or by DropRevoked.
	if reason := h.invalid(leaf); reason != "" {
		h.forget(cl)
		return refuse(packets.ErrNotAuthorized, verdict.ACLDenied, id, reason)
	}
	return nil
}

// invalid says why a certificate that passed the handshake may no longer be
// used: revoked since, or expired. Expiry is judged only while the clock is
// trusted: while it is not, the handshake checked the certificate at the
// clock's floor instead (a certificate expired before it is refused there).
func (h *Hook) invalid(c *x509.Certificate) string {
	switch {
	case h.o.Revoked != nil && h.o.Revoked(c):
		return "certificate revoked"
	case (h.o.ClockTrusted == nil || h.o.ClockTrusted()) && h.o.Now().After(c.NotAfter):
		return "certificate expired " + c.NotAfter.UTC().Format(time.RFC3339)
	}
	return ""
}

// OnConnectAuthenticate admits exactly the connections OnConnect bound.
func (h *Hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	return h.session(cl) != nil
}

// Bounds of a device's subscriptions. Each filter level is a node of
// mochi's topic tree, built by rescanning the filter from its start, so a
// deep filter costs memory and quadratic time, and every filter stays while
// the session lives.
const (
	maxFilterLen    = 256 // bytes after devices/{id}/cmd/
	maxFilterLevels = 8   // levels after devices/{id}/cmd/
	maxSubs         = 16  // filters held by one session
)

// OnACLCheck lets a device subscribe to its own command topics only, within
// the bounds above. Publish permission is decided in OnPublish, so that a
// denied publish gets its verdict, event and 3.1.1 behaviour like every
// other rejection.
func (h *Hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	s := h.session(cl)
	if s == nil {
		return false
	}
	if write {
		return true
	}
	if why := subscribeDenied(s.cmd, topic); why != "" {
		h.denySubscription(cl, s, why)
		return false
	}
	return true
}

// denySubscription reports a refused filter: a rejection and a strike.
func (h *Hook) denySubscription(cl *mqtt.Client, s *session, why string) {
	h.o.Metrics.Rejected.WithLabelValues(string(verdict.ACLDenied)).Inc()
	if h.reject(s, verdict.ACLDenied, why) {
		go h.server.DisconnectClient(cl, packets.ErrNotAuthorized) // after the SUBACK
	}
}

// OnSubscribe bounds the filters a session holds to maxSubs (see
// [subcap]); a filter beyond it is refused like any other, with a strike.
func (h *Hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	s := h.session(cl)
	if s == nil {
		return pk // OnACLCheck refuses every filter
	}
	return subcap.Apply(cl, pk, maxSubs, func(f string) bool { return subscribeDenied(s.cmd, f) == "" }, func(f string) {
		h.denySubscription(cl, s, fmt.Sprintf("subscribe to %q beyond the limit of %d filters", truncate(f, 200), maxSubs))
	})
}

// subscribeDenied says why a device whose command topics start with cmd
// may not subscribe to filter (or receive a message on it), or "" if it
// may.
func subscribeDenied(cmd, filter string) string {
	if filter+"/" == cmd {
		return "" // devices/{id}/cmd itself
	}
	rest, ok := strings.CutPrefix(filter, cmd)
	switch {
	case !ok:
		return fmt.Sprintf("subscribe to %q", truncate(filter, 200))
	case len(rest) > maxFilterLen || strings.Count(rest, "/") >= maxFilterLevels:
		return fmt.Sprintf("subscribe to a filter of %d bytes and %d levels under %s (limits %d and %d)",
			len(rest), strings.Count(rest, "/")+1, cmd, maxFilterLen, maxFilterLevels)
	}
	return ""
}

// OnDisconnect forgets the connection.
func (h *Hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) { h.forget(cl) }

// forget drops a connection's session once.
func (h *Hook) forget(cl *mqtt.Client) {
	h.mu.Lock()
	s, ok := h.sessions[cl]
	delete(h.sessions, cl)
	h.mu.Unlock()
	if ok {
		h.o.Metrics.Connections.Dec()
		for _, o := range h.o.Observers {
			o.Disconnected(s.id, s.cert, s.remote)
		}
	}
}

// Connection is one authenticated device connection, as [Hook.Connections]
// lists it.
type Connection struct {
	ID     string
	Cert   *x509.Certificate
	Remote string
}

// Connections lists the device connections open now.
func (h *Hook) Connections() []Connection {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]Connection, 0, len(h.sessions))
	for _, s := range h.sessions {
		out = append(out, Connection{ID: s.id, Cert: s.cert, Remote: s.remote})
	}
	return out
}

func (h *Hook) session(cl *mqtt.Client) *session {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.sessions[cl]
}

// DropRevoked disconnects every device whose certificate has been revoked
// since it connected, or has expired. The gateway calls it after reloading
// the CRL, and periodically.
func (h *Hook) DropRevoked() int {
	type dropped struct {
		cl     *mqtt.Client
		s      *session
		reason string
	}
	var drop []dropped
	h.mu.RLock()
	for cl, s := range h.sessions {
		if reason := h.invalid(s.cert); reason != "" {
			drop = append(drop, dropped{cl, s, reason})
		}
	}
	h.mu.RUnlock()
	// Events are written outside the lock: a CONNECT waiting for it would
	// hold up every publish's session lookup behind it.
	for _, d := range drop {
		h.emit(verdict.ACLDenied, d.s.id, d.reason+": connection closed", d.s.remote)
		_ = h.server.DisconnectClient(d.cl, packets.ErrNotAuthorized)
	}
	return len(drop)
}

// Drain stops taking publishes (they get no PUBACK, so devices resend them
// after reconnecting), waits for those in progress to be stored, and then,
// up to timeout, for their PUBACKs to be written. The gateway calls it
// before closing the device server, so a stored message does not lose its
// PUBACK to the shutdown (a PUBACK still lost, for instance to a write that
// failed, makes the device resend: a duplicate, never a loss).
func (h *Hook) Drain(timeout time.Duration) {
	// The write lock waits for the publishes in progress; every publish
	// after it sees the flag.
	h.inflight.Lock()
	h.draining.Store(true)
	h.inflight.Unlock()
	for end := time.Now().Add(timeout); h.unacked.Load() > 0 && time.Now().Before(end); {
		time.Sleep(time.Millisecond)
	}
}

func peerCert(cl *mqtt.Client) *x509.Certificate {
	c, ok := cl.Net.Conn.(*Conn)
	if !ok {
		return nil
	}
	st := c.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		return nil
	}
	return st.PeerCertificates[0]
}
