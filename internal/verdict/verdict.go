// Package verdict names the outcome of every message the gateway receives
// (docs/protocol.md#4-verdicts-and-reason-codes) and maps each outcome to its MQTT 5 reason code.
//
// Stages report a rejection as an [*Error] carrying its [Verdict]; the
// gateway turns that into a PUBACK reason code with [Verdict.Code], a
// security event, a log line and a metric.
package verdict

import (
	"errors"
	"fmt"
	"slices"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Verdict is the outcome of one message. The string values are part of the
// wire contract: they appear in security events and in --attack names.
type Verdict string

// The verdicts of docs/protocol.md#4-verdicts-and-reason-codes.
const (
	Accepted         Verdict = "accepted"
	ACLDenied        Verdict = "acl_denied"
	TooLarge         Verdict = "too_large"
	Malformed        Verdict = "malformed"
	BadSignature     Verdict = "bad_signature"
	IdentityMismatch Verdict = "identity_mismatch"
	Replay           Verdict = "replay"
	Stale            Verdict = "stale"
	Future           Verdict = "future"
	Schema           Verdict = "schema"
	RateLimited      Verdict = "rate_limited"
	Quarantined      Verdict = "quarantined"
	Overloaded       Verdict = "overloaded"
)

// All lists every verdict, accepted first, in the order of docs/protocol.md#4-verdicts-and-reason-codes.
func All() []Verdict {
	return []Verdict{Accepted, ACLDenied, TooLarge, Malformed, BadSignature, IdentityMismatch,
		Replay, Stale, Future, Schema, RateLimited, Quarantined, Overloaded}
}

// Rejections lists every verdict but accepted.
func Rejections() []Verdict { return All()[1:] }

// Code is the MQTT 5 PUBACK reason code of the verdict. The value is a bare
// packets.Code, as mochi's OnPublish requires (it type-asserts the error).
func (v Verdict) Code() packets.Code {
	switch v {
	case Accepted:
		return packets.CodeSuccess
	case ACLDenied, BadSignature, IdentityMismatch, Quarantined:
		return packets.ErrNotAuthorized
	case TooLarge:
		return packets.ErrPacketTooLarge
	case Malformed, Schema:
		return packets.ErrPayloadFormatInvalid
	case Replay, Stale, Future:
		return packets.ErrImplementationSpecificError
	case RateLimited, Overloaded:
		return packets.ErrQuotaExceeded
	}
	return packets.ErrUnspecifiedError
}

// Valid reports whether v is one of the verdicts of [All].
func (v Verdict) Valid() bool {
	for _, x := range All() {
		if x == v {
			return true
		}
	}
	return false
}

// Error is a rejection: the verdict and a short human-readable detail. The
// detail goes into logs and security events, so it never holds key material
// or payload bytes.
type Error struct {
	Verdict Verdict
	Detail  string
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return string(e.Verdict)
	}
	return string(e.Verdict) + ": " + e.Detail
}

// New returns a rejection with a formatted detail.
func New(v Verdict, format string, args ...any) *Error {
	return &Error{Verdict: v, Detail: fmt.Sprintf(format, args...)}
}

// Of returns the verdict carried by err: Accepted for nil, the verdict of an
// [*Error] anywhere in err's chain, and "" for any other error.
func Of(err error) Verdict {
	if err == nil {
		return Accepted
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Verdict
	}
	return ""
}

// Events lists the names of the security events that are not a message's
// verdict: a refused TLS handshake, the gateway's own findings and state
// changes (audit, anomaly, clock, enrolment, updates, resets) and the FHIR
// exporter's no_patient. An event's `verdict` field is one of these or a
// rejection verdict ([Rejections]); a test of the repository checks that
// every event name in its code is listed here.
func Events() []string {
	return []string{"handshake_failed", "audit", "anomaly", "clock_untrusted", "clock_trusted",
		"firmware_below_min", "enroll_denied", "enroll_malformed", "update_denied", "job_refused",
		"update_rejected", "queue_reset", "replay_reset", "no_patient"}
}

// IsEventName reports whether name can be a security event's `verdict`: a
// rejection verdict or one of [Events].
func IsEventName(name string) bool {
	return slices.Contains(Rejections(), Verdict(name)) || slices.Contains(Events(), name)
}
