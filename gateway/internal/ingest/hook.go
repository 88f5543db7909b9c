// Package ingest is the gateway's device side: the admission-controlled mTLS
// listener and the one mochi hook that runs every stage of the pipeline in
// order inside OnPublish, before the PUBACK is sent:
//
//	identify  connection bound to the certificate's CN; topic ACL; quarantine
//	size      payload within the limit
//	verify    COSE_Sign1 signature with the certificate's key ([envelope.Verifier])
//	decode    strict CBOR record ([telemetry.Decode]); dev equals the TLS identity
//	guard     replay (seq above the last accepted, by a bounded jump), time window, rate limits
//	schema    the kind's codes, units and ranges ([telemetry.Schemas])
//	enqueue   durable append to the store-and-forward queue (group commit)
//
// decode, guard and schema are [telemetry.CheckRecord], the record check the
// test vectors use too, with the guard's replay and rate checks hooked in;
// the replay rule itself is the queue's ([spool.Outcome]), which this
// package only maps to a verdict.
// A PUBACK therefore means "on disk". Every rejection becomes a verdict
// ([verdict.Verdict]), a metric, a log line and a security event.
package ingest

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/gateway/internal/guard"
	"github.com/vitalgate/vitalgate/gateway/internal/spool"
	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/subcap"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/verdict"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// Options wires the hook to the rest of the gateway.
type Options struct {
	Queue   *spool.Queue
	Guard   *guard.Guard
	Schemas *atomic.Pointer[telemetry.Schemas] // swapped on reload
	// Revoked reports whether a certificate serial is revoked now; sessions
	// are re-checked with [Hook.DropRevoked] after each reload.
	Revoked func(cert *x509.Certificate) bool
	// Event receives every security event; it must not block for long.
	// start is true for the event that starts a device's quarantine, which
	// no event budget may hold back (the refusals that follow are ordinary
	// events).
	Event      func(e audit.Event, start bool)
	Metrics    *Metrics
	Site       string
	GatewayID  string
	JSON       bool // cloud payload as JSON instead of CBOR
	MaxPayload int
	MaxAge     time.Duration
	Keepalive  uint16 // keepalive imposed on clients that ask for none or a longer one
	// ResendWindow: a replayed seq this close below the last accepted one
	// (a device's QoS 1 messages in flight) does not count towards
	// quarantine. Default 64.
	ResendWindow int
	Log          *slog.Logger
	Now          func() time.Time
}

// Hook is the gateway's only mochi hook. mochi ORs OnConnectAuthenticate
// across hooks, so no other hook may be added to the device server.
type Hook struct {
	mqtt.HookBase
	o      Options
	server *mqtt.Server

	mu       sync.RWMutex
	sessions map[*mqtt.Client]*session

	// draining refuses new publishes (no PUBACK: the device resends to the
	// next gateway) while Drain waits for those in progress to be stored.
	draining atomic.Bool
	inflight sync.RWMutex // held for reading by each OnPublish
	unacked  atomic.Int64 // stored QoS 1 messages whose PUBACK is not written yet

	storeErr atomic.Pointer[StoreError] // since the last successful append
}

// StoreError is a failure of the queue to store messages (a full disk, say):
// the last error, and when the failures began.
type StoreError struct {
	Err   error
	Since time.Time
}

// session is what the gateway knows of one authenticated connection.
type session struct {
	id       string
	cert     *x509.Certificate
	verifier *envelope.Verifier
	remote   string
	topic    string // the one topic the device may publish to
	cmd      string // prefix of the topics it may subscribe to
}

// NewHook returns the hook. Attach it with [Hook.Attach].
func NewHook(o Options) *Hook {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Keepalive == 0 {
		o.Keepalive = 300
	}
	if o.ResendWindow <= 0 {
		o.ResendWindow = 64
	}
	return &Hook{o: o, sessions: make(map[*mqtt.Client]*session)}
}

// Attach adds the hook to s; it must be the only hook providing
// authentication on s.
func (h *Hook) Attach(s *mqtt.Server) error {
	h.server = s
	return s.AddHook(h, nil)
}

// ID names the hook in mochi's logs.
func (h *Hook) ID() string { return "vitalgate-ingest" }

// Provides declares the events the hook handles.
func (h *Hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnSubscribe,
		mqtt.OnDisconnect, mqtt.OnPublish, mqtt.OnPacketRead,
	}, []byte{b})
}

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
	v, err := envelope.NewVerifier(leaf.PublicKey, id)
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
		topic: "devices/" + id + "/telemetry", cmd: "devices/" + id + "/cmd/",
	}
	h.mu.Unlock()
	h.o.Metrics.Connections.Inc()
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
// used: revoked since, or expired.
func (h *Hook) invalid(c *x509.Certificate) string {
	switch {
	case h.o.Revoked != nil && h.o.Revoked(c):
		return "certificate revoked"
	case h.o.Now().After(c.NotAfter):
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

// OnPacketRead refuses a QoS 2 PUBLISH before mochi sees it: the CONNACK
// advertised a maximum QoS of 1, and mochi would otherwise lower the QoS,
// store the record and answer with a PUBACK, which the device takes for a
// protocol error and resends. MQTT 5 gets DISCONNECT 0x9B (QoS not
// supported); MQTT 3.1.1, which has no such answer, has its connection
// closed. Nothing is stored; the refusal is a malformed verdict with a
// strike.
func (h *Hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos < 2 {
		return pk, nil
	}
	h.o.Metrics.Rejected.WithLabelValues(string(verdict.Malformed)).Inc()
	detail := fmt.Sprintf("QoS 2 PUBLISH to %q (maximum QoS 1): connection closed", truncate(pk.TopicName, 200))
	if s := h.session(cl); s != nil {
		h.reject(s, verdict.Malformed, detail)
	} else {
		h.emit(verdict.Malformed, "", detail, cl.Net.Remote)
	}
	if cl.Properties.ProtocolVersion == 5 {
		_ = h.server.DisconnectClient(cl, packets.ErrQosNotSupported)
	}
	// mochi passes on only this error, which ends its read loop and so
	// closes the connection.
	return pk, packets.ErrRejectPacket
}

// OnDisconnect forgets the connection.
func (h *Hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) { h.forget(cl) }

// forget drops a connection's session once.
func (h *Hook) forget(cl *mqtt.Client) {
	h.mu.Lock()
	_, ok := h.sessions[cl]
	delete(h.sessions, cl)
	h.mu.Unlock()
	if ok {
		h.o.Metrics.Connections.Dec()
	}
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

// OnPublish runs the pipeline. Its error return is what mochi sends for a
// rejected message: a bare packets.Code gives that reason on MQTT 5,
// CodeSuccessIgnore a success PUBACK without fan-out, and ErrRejectPacket
// nothing.
//
// A stored message (accepted, or the resend of the last one) is
// acknowledged here, once the record is on disk, and handed back to mochi
// as an ignored QoS 0 message, for which mochi does nothing more. Its QoS 1
// path would track a PUBACK that is complete at once and fan the message
// out to no one; ErrRejectPacket would box the whole packet for a debug log
// line. Both cost an allocation of the packet's size per message.
func (h *Hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	s := h.session(cl)
	if s == nil {
		return pk, packets.ErrRejectPacket // never acknowledged, never fanned out
	}
	reply, stored := h.publish(cl, s, &pk)
	if !stored {
		return pk, reply
	}
	if pk.FixedHeader.Qos > 0 {
		_ = cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
		h.unacked.Add(-1)
	}
	pk.FixedHeader.Qos, pk.FixedHeader.Retain, pk.Ignore = 0, false, true
	return pk, nil
}

// publish runs the pipeline for pk under the drain lock. stored reports a
// message on disk whose PUBACK the caller writes (outside the lock, so a
// device that does not read cannot hold up [Hook.Drain] beyond its
// timeout); otherwise reply is what mochi is to send.
func (h *Hook) publish(cl *mqtt.Client, s *session, pk *packets.Packet) (reply error, stored bool) {
	start := time.Now()
	h.inflight.RLock()
	defer h.inflight.RUnlock()
	if h.draining.Load() {
		return packets.ErrRejectPacket, false // shutting down: the device resends later
	}
	err := h.process(s, pk)
	h.o.Metrics.Latency.Observe(time.Since(start).Seconds())
	if err == nil || err == errDuplicate {
		if err == nil {
			h.storeErr.Store(nil)
			h.o.Metrics.Accepted.Inc()
		} else {
			h.o.Metrics.Duplicates.Inc()
		}
		if pk.FixedHeader.Qos > 0 {
			h.unacked.Add(1) // until the caller has written the PUBACK
		}
		return nil, true
	}
	v := verdict.Of(err)
	if v == "" { // not a verdict: an internal failure of the queue
		h.noteStoreError(err)
		h.o.Log.Error("enqueue failed", "dev", s.id, "error", err)
		v, err = verdict.Overloaded, verdict.New(verdict.Overloaded, "queue unavailable")
	}
	detail := err.Error()
	if e := (*verdict.Error)(nil); errors.As(err, &e) {
		detail = e.Detail
	}
	h.o.Metrics.Rejected.WithLabelValues(string(v)).Inc()
	reply = replyFor(v, cl.Properties.ProtocolVersion, pk.FixedHeader.Qos)
	if isNoStrike(err) {
		h.emit(v, s.id, detail, s.remote)
		return reply, false
	}
	if !h.reject(s, v, detail) {
		return reply, false
	}
	// This rejection starts a quarantine: the device still gets the
	// verdict of this message, then the disconnect, in that order.
	if pk.FixedHeader.Qos > 0 && reply != packets.ErrRejectPacket {
		ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}
		if code, ok := reply.(packets.Code); ok && cl.Properties.ProtocolVersion == 5 && code != packets.CodeSuccessIgnore {
			ack.ReasonCode, ack.Properties.ReasonString = code.Code, code.Reason
		}
		_ = cl.WritePacket(ack)
	}
	_ = h.server.DisconnectClient(cl, packets.ErrNotAuthorized)
	return packets.ErrRejectPacket, false
}

// noteStoreError records a failure to store a message.
func (h *Hook) noteStoreError(err error) {
	since := h.o.Now()
	if prev := h.storeErr.Load(); prev != nil {
		since = prev.Since
	}
	h.storeErr.Store(&StoreError{Err: err, Since: since})
}

// StoreError is the queue's failure to store messages, or nil if the last
// message that reached the queue was stored (or none failed).
func (h *Hook) StoreError() *StoreError { return h.storeErr.Load() }

// reject reports a rejection and counts it towards quarantine. It reports
// whether this strike started a quarantine, in which case the caller
// disconnects the device. Overload is the gateway's state, not the device's
// fault, and does not count.
func (h *Hook) reject(s *session, v verdict.Verdict, detail string) (quarantined bool) {
	h.emit(v, s.id, detail, s.remote)
	if v == verdict.Overloaded || v == verdict.Quarantined {
		return false
	}
	until := h.o.Guard.Strike(s.id)
	if until.IsZero() {
		return false
	}
	h.o.Metrics.Quarantines.Inc()
	h.emitEvent(verdict.Quarantined, s.id, fmt.Sprintf("repeated violations (last: %s); quarantined until %s",
		v, until.UTC().Format(time.RFC3339)), s.remote, true)
	return true
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

// replyFor is the section 4 behaviour: MQTT 5 QoS 1 gets the reason code;
// MQTT 3.1.1 QoS 1 is acknowledged and dropped, except overloaded, whose
// acknowledgement is withheld so the device keeps the message; QoS 0 is
// dropped.
func replyFor(v verdict.Verdict, version, qos byte) error {
	switch {
	case qos == 0:
		return packets.CodeSuccessIgnore
	case version == 5:
		return v.Code()
	case v == verdict.Overloaded:
		return packets.ErrRejectPacket
	default:
		return packets.CodeSuccessIgnore
	}
}

func (h *Hook) process(s *session, pk *packets.Packet) error {
	// identify
	if pk.TopicName != s.topic {
		return verdict.New(verdict.ACLDenied, "publish to %q", truncate(pk.TopicName, 200))
	}
	if until, q := h.o.Guard.Quarantined(s.id); q {
		return verdict.New(verdict.Quarantined, "quarantined until %s", until.UTC().Format(time.RFC3339))
	}
	if len(pk.Payload) > h.o.MaxPayload {
		return verdict.New(verdict.TooLarge, "payload %d bytes over the limit of %d", len(pk.Payload), h.o.MaxPayload)
	}
	// verify
	raw, err := s.verifier.Verify(pk.Payload)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(pk.Payload)
	now := h.o.Now()
	rec, err := telemetry.CheckRecord(raw, &telemetry.RecordCheck{
		Dev: s.id, Now: now, MaxAge: h.o.MaxAge, Schemas: h.o.Schemas.Load(),
	}, &telemetry.GatewayChecks{
		Replay: func(rec *telemetry.Record) error { return h.replayCheck(s.id, rec.Seq, sum[:], len(pk.Payload)) },
		Rate: func(*telemetry.Record) error {
			if !h.o.Guard.Allow(s.id, len(pk.Payload)) {
				return verdict.New(verdict.RateLimited, "over the device's message or byte rate")
			}
			return nil
		},
	})
	if err != nil {
		return h.staleCheck(s.id, len(pk.Payload), err)
	}
	// enqueue
	data, err := h.cloudMessage(rec, raw, pk.Payload, now)
	if err != nil {
		return fmt.Errorf("encode cloud message: %w", err)
	}
	res, err := h.o.Queue.AppendMarked(s.id, rec.Seq, sum[:], data)
	switch {
	case errors.Is(err, spool.ErrFull):
		return verdict.New(verdict.Overloaded, "queue full")
	case err != nil:
		return err
	}
	// Not Accepted: another copy (a resend on a new connection) or a later
	// seq committed first.
	return h.seqVerdict(rec.Seq, res)
}

// replayCheck is the replay stage: the queue's replay rule ([spool.Queue.Judge],
// the rule its commit applies) against the device's committed last seq.
// The commit judges again, and its answer is final; judging here too puts
// replay at its place in the order (a replayed record that is also stale,
// over the rate or off its schema is a replay) and spares a refused record
// the rate budget, the cloud encoding and the queue's reservation and
// commit. A resend, answered without a strike, still costs the device's
// rate: otherwise resends would be a free way to keep the signature check
// busy.
func (h *Hook) replayCheck(id string, seq uint64, sum []byte, size int) error {
	err := h.seqVerdict(seq, h.o.Queue.Judge(id, seq, sum))
	if err == nil {
		return nil
	}
	if (err == errDuplicate || isNoStrike(err)) && !h.o.Guard.Allow(id, size) {
		return verdict.New(verdict.RateLimited, "over the device's message or byte rate (resends of seq %d)", seq)
	}
	return err
}

// staleCheck passes on a rejection of the record check, except a stale
// record: a device that was offline longer than the accepted age uploads
// its backlog, so that is no strike, but it still costs the device's rate.
func (h *Hook) staleCheck(id string, size int, err error) error {
	e := (*verdict.Error)(nil)
	if !errors.As(err, &e) || e.Verdict != verdict.Stale {
		return err
	}
	if !h.o.Guard.Allow(id, size) {
		return verdict.New(verdict.RateLimited, "over the device's message or byte rate (stale records)")
	}
	return &noStrike{e}
}

// seqVerdict maps the queue's replay rule outcome for seq to the device's
// answer: nil when accepted, errDuplicate for a resend of the device's last
// accepted message, a [noStrike] replay for a seq just below it (within
// ResendWindow), a replay otherwise; a seq jump is a replay saying so.
func (h *Hook) seqVerdict(seq uint64, res spool.Result) error {
	switch res.Outcome {
	case spool.Accepted:
		return nil
	case spool.Duplicate:
		return errDuplicate
	case spool.SeqJump:
		if !res.HasLast {
			return verdict.New(verdict.Replay, "seq jump: first seq %d of the device is over %d", seq, res.Limit)
		}
		return verdict.New(verdict.Replay, "seq jump: seq %d is %d past last accepted %d, limit %d", seq, seq-res.Last, res.Last, res.Limit)
	case spool.Replay:
		if res.Last-seq < uint64(h.o.ResendWindow) {
			// Probably a resend of a message stored before its PUBACK was
			// lost (several can be in flight): a replay verdict, but no
			// strike towards quarantine.
			return &noStrike{verdict.New(verdict.Replay, "seq %d not above last accepted %d (resend?)", seq, res.Last)}
		}
		return verdict.New(verdict.Replay, "seq %d not above last accepted %d", seq, res.Last)
	}
	return fmt.Errorf("queue judged seq %d of the device: unknown outcome %v", seq, res.Outcome)
}

func isNoStrike(err error) bool {
	re := (*noStrike)(nil)
	return errors.As(err, &re)
}

// errDuplicate marks a resend of the device's last accepted message: the
// same seq and the same signed bytes (their SHA-256 is stored with the last
// seq, so this holds across restarts). A device resends when it lost the
// PUBACK (a dropped connection, a gateway crash); the record is already
// queued, so the resend is acknowledged as success and not stored again. A
// different message reusing the seq is a replay.
var errDuplicate = errors.New("duplicate of the last accepted message")

// noStrike is a rejection that says nothing against the device, so it does
// not count towards quarantine: a replay close enough to the last accepted
// seq to be an honest resend, or a record older than the accepted age (a
// device that was offline longer than that uploads its backlog). Both
// still take the device's rate budget.
type noStrike struct{ err *verdict.Error }

func (e *noStrike) Error() string { return e.err.Error() }
func (e *noStrike) Unwrap() error { return e.err }

// cloudMessage builds the queue entry of an accepted record: its cloud
// topic and message ([wire.Entry]).
func (h *Hook) cloudMessage(rec *telemetry.Record, raw, sig []byte, now time.Time) ([]byte, error) {
	f := wire.CBOR
	if h.o.JSON {
		f = wire.JSON
	}
	return wire.Entry(f, &wire.Accepted{Site: h.o.Site, GW: h.o.GatewayID, RX: now.UnixMilli(), Rec: rec, Raw: raw, Sig: sig})
}

func (h *Hook) emit(v verdict.Verdict, dev, detail, remote string) {
	h.emitEvent(v, dev, detail, remote, false)
}

func (h *Hook) emitEvent(v verdict.Verdict, dev, detail, remote string, start bool) {
	if h.o.Event == nil {
		return
	}
	h.o.Event(audit.Event{V: 1, TS: h.o.Now().UnixMilli(), GW: h.o.GatewayID, Dev: dev,
		Verdict: string(v), Detail: detail, Remote: remote}, start)
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

// truncate keeps peer-controlled strings in logs and events short and valid
// UTF-8; callers quote them.
func truncate(s string, n int) string {
	if len(s) > n {
		s = s[:n] + "…"
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
