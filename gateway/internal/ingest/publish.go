package ingest

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/gateway/internal/spool"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/verdict"
	"github.com/vitalgate/vitalgate/internal/wire"
)

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
	if cl.Net.Inline {
		return pk, nil // the gateway's own commands to devices (devices/{id}/cmd/...)
	}
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
	defer h.observe(s.id, err)
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

// observe tells the observers the verdict of one message of dev.
func (h *Hook) observe(dev string, err error) {
	if len(h.o.Observers) == 0 {
		return
	}
	v := verdict.Verdict("")
	if err != nil && err != errDuplicate {
		if v = verdict.Of(err); v == "" {
			v = verdict.Overloaded
		}
	}
	for _, o := range h.o.Observers {
		o.Verdict(dev, v)
	}
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

// process runs the stages of the pipeline on one message, in order:
// identify, size, verify, the record check (decode, guard, schema) and
// enqueue. nil means the message is stored; errDuplicate, that it was
// stored before.
func (h *Hook) process(s *session, pk *packets.Packet) error {
	// identify
	status := pk.TopicName == s.status
	if pk.TopicName != s.topic && !status {
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
	// time: a clock that cannot be trusted (wrong at boot) judges no ts;
	// the record is stored and marked instead of refused as future or stale
	untrusted := h.o.ClockTrusted != nil && !h.o.ClockTrusted()
	checks := telemetry.GatewayChecks{
		Replay: func(rec *telemetry.Record) error { return h.replayCheck(s.id, rec.Seq, sum[:], len(pk.Payload)) },
		Rate: func(*telemetry.Record) error {
			if !h.o.Guard.Allow(s.id, len(pk.Payload)) {
				return verdict.New(verdict.RateLimited, "over the device's message or byte rate")
			}
			return nil
		},
	}
	if status {
		return h.status(s, raw, sum[:], len(pk.Payload), &telemetry.RecordCheck{Dev: s.id, Now: now, MaxAge: h.o.MaxAge, ClockUntrusted: untrusted}, &checks)
	}
	rec, err := telemetry.CheckRecord(raw, &telemetry.RecordCheck{
		Dev: s.id, Now: now, MaxAge: h.o.MaxAge, Schemas: h.o.Schemas.Load(), ClockUntrusted: untrusted,
	}, &checks)
	if err != nil {
		return h.staleCheck(s.id, len(pk.Payload), err)
	}
	// enqueue
	data, err := h.cloudMessage(rec, raw, pk.Payload, now, untrusted)
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
	if err := h.seqVerdict(rec.Seq, res); err != nil {
		return err
	}
	if untrusted {
		h.o.Metrics.ClockUntrusted.Inc()
	}
	return nil
}

// status is the end of the pipeline for a status record (after identify,
// size and verify): the record check ([telemetry.StatusCheck]: decode,
// identity, replay, time, rate, values), then the device's seq committed
// without queueing anything ([spool.Queue.Advance]: status records share
// the telemetry's replay window and are not relayed), then the record
// handed to [Options.Status]. A resend of the last status record is a
// duplicate, acknowledged and not handed over again.
func (h *Hook) status(s *session, raw, sum []byte, size int, c *telemetry.RecordCheck, g *telemetry.GatewayChecks) error {
	st, err := telemetry.StatusCheck(raw, c, g)
	if err != nil {
		return h.staleCheck(s.id, size, err)
	}
	res, err := h.o.Queue.Advance(s.id, st.Seq, sum)
	if err != nil {
		return err
	}
	if err := h.seqVerdict(st.Seq, res); err != nil {
		return err
	}
	if h.o.Status != nil {
		h.o.Status(s.id, st)
	}
	return nil
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
func (h *Hook) cloudMessage(rec *telemetry.Record, raw, sig []byte, now time.Time, clockUntrusted bool) ([]byte, error) {
	f := wire.CBOR
	if h.o.JSON {
		f = wire.JSON
	}
	below := h.o.BelowMin != nil && h.o.BelowMin(rec.Dev)
	return wire.Entry(f, &wire.Accepted{Site: h.o.Site, GW: h.o.GatewayID, RX: now.UnixMilli(), Rec: rec, Raw: raw, Sig: sig, FWBelowMin: below, ClockUntrusted: clockUntrusted})
}
