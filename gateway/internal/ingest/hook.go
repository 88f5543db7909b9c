// Package ingest is the gateway's device side: the admission-controlled mTLS
// listener and the one mochi hook that runs every stage of the pipeline in
// order inside OnPublish, before the PUBACK is sent:
//
//	identify  connection bound to the certificate's CN; topic ACL; quarantine
//	size      payload within the limit
//	verify    COSE_Sign1 signature with the certificate's key ([envelope.Verifier])
//	decode    strict CBOR record ([telemetry.Decode]); dev equals the TLS identity
//	guard     replay (seq above the last accepted, by a bounded jump), time window (skipped
//	          while the clock is untrusted: the record is marked instead), rate limits
//	schema    the kind's codes, units and ranges ([telemetry.Schemas])
//	enqueue   durable append to the store-and-forward queue (group commit)
//
// A status record (devices/{id}/status) goes through identify, size and
// verify like a telemetry record, then [telemetry.StatusCheck] (the same
// order, the same replay window), and instead of enqueue its seq is
// committed alone ([spool.Queue.Advance]) and the record handed to
// [Options.Status]: status records are never relayed.
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
	"crypto/x509"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/gateway/internal/guard"
	"github.com/vitalgate/vitalgate/gateway/internal/spool"
	"github.com/vitalgate/vitalgate/internal/batchverify"
	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// Options wires the hook to the rest of the gateway.
type Options struct {
	Queue *spool.Queue
	Guard *guard.Guard
	// Batcher, when set, checks the EdDSA signatures of all devices in
	// batches ([envelope.WithBatcher]); nil: each alone, same verdicts.
	Batcher *batchverify.Batcher
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
	// Status receives each accepted status record of a device
	// (devices/{id}/status, docs/protocol.md#status-records), after its
	// seq is committed and before its PUBACK; nil ignores them. It runs on
	// the message path: it must be cheap and never block.
	Status func(dev string, st *telemetry.Status)
	// Observers are told of each device's connections and verdicts (the
	// posture audit, the behaviour baseline); may be empty.
	Observers []Observer
	// BelowMin reports a device whose firmware is below its model's
	// minimum: its cloud messages carry fw_below_min. Called once per
	// accepted message; nil: no mark.
	BelowMin func(dev string) bool
	// ClockTrusted reports whether the gateway's clock can judge records'
	// time (package clocktrust); while it cannot, records are stored
	// without the time check and their cloud messages marked
	// clock_untrusted. Called once per message; nil: always trusted.
	ClockTrusted func() bool
	Log          *slog.Logger
	Now          func() time.Time
}

// Observer is told of each device's life on the gateway. Its methods run on
// the connection and message paths: they must be cheap and never block.
type Observer interface {
	// Connected: dev was admitted with cert from remote (host:port). A
	// device already connected elsewhere is taken over after this call.
	Connected(dev string, cert *x509.Certificate, remote string)
	// Disconnected: the connection from remote is gone.
	Disconnected(dev string, cert *x509.Certificate, remote string)
	// Verdict: one message of dev ended in v ("" for accepted, a duplicate
	// of an accepted one included).
	Verdict(dev string, v verdict.Verdict)
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
	topic    string // the topic of the device's telemetry
	status   string // the topic of its status records
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

// truncate keeps peer-controlled strings in logs and events short and valid
// UTF-8; callers quote them.
func truncate(s string, n int) string {
	if len(s) > n {
		s = s[:n] + "…"
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
