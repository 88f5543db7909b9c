// Package wire is the cloud message format: what a gateway publishes to
// telemetry/{site}/{dev}/{kind} for each record it accepted, and the queue
// entry that carries it from the device side to the relay. Consumers find
// the format in docs/apps.md#telemetry: it is a contract with them, so the
// tests pin the bytes [Encode] writes.
//
// # The message
//
// A message is a map with the keys v (the format version, [Version]), id
// ("{dev}:{seq}" of the record, the same on every redelivery), site, gw, rx
// (when the gateway accepted the record, Unix milliseconds), rec (the
// record) and sig (the device's COSE_Sign1 exactly as it was sent), and
// fw_below_min (true) only for a device whose firmware is below the site's
// minimum for its model. It is
// encoded in one of two [Format]s:
//
//   - CBOR, the default: RFC 8949 core deterministic encoding, with rec
//     being the device's signed record bytes, unchanged.
//   - JSON: encoding/json of the same keys, rec re-encoded by the gateway
//     and sig in base64 (standard alphabet, padded).
//
// No CBOR map starts with '{', so [Decode] tells the two apart by the first
// byte. A message is at most [MaxMessage] bytes.
//
// # The queue entry
//
// The gateway stores each message with its topic, as one [Frame]: the topic,
// a NUL byte, then the payload. [Entry] builds it for an [Accepted] record
// (in one allocation for CBOR) and [Unframe] splits it again for the relay,
// which publishes the payload unchanged.
//
// # Security events
//
// [Event] is the format of a security event, the other message of the
// contract with apps (docs/apps.md#security-events): what the gateways
// publish on security/{site}/{gateway} and append to their audit logs, and
// what a FHIR exporter publishes on security/{site}/{its client ID}.
package wire

import (
	"strconv"

	"github.com/vitalgate/vitalgate/internal/telemetry"
)

// Version is the version of the cloud message format, its "v".
const Version = 1

// MaxMessage bounds a cloud message: the record twice (decoded in rec, signed
// in sig) plus the envelope.
const MaxMessage = 2*telemetry.MaxPayload + 4096

// Format is an encoding of the cloud message: [CBOR] or [JSON].
type Format string

// The formats of the cloud message.
const (
	// CBOR is deterministic CBOR carrying the device's record bytes; the
	// empty Format means CBOR too.
	CBOR Format = "cbor"
	// JSON is JSON with the record re-encoded and sig in base64.
	JSON Format = "json"
)

// Message is a decoded cloud message (see the package documentation). ID
// ("{dev}:{seq}") is stable across redelivery: consumers drop duplicates by
// it. Rec is decoded but not checked against the signed record in Sig.
type Message struct {
	V    int              `cbor:"v" json:"v"`
	ID   string           `cbor:"id" json:"id"`
	Site string           `cbor:"site" json:"site"`
	GW   string           `cbor:"gw" json:"gw"`
	RX   int64            `cbor:"rx" json:"rx"`
	Rec  telemetry.Record `cbor:"rec" json:"rec"`
	Sig  []byte           `cbor:"sig" json:"sig"`
	// FWBelowMin: the device runs firmware below the site's minimum for
	// its model (absent, false, otherwise). Its data is relayed all the same.
	FWBelowMin bool `cbor:"fw_below_min,omitempty" json:"fw_below_min,omitempty"`
	// ClockUntrusted: the gateway accepted the record while it could not
	// trust its clock (absent, false, otherwise): the record's ts was not
	// judged as future or stale.
	ClockUntrusted bool `cbor:"clock_untrusted,omitempty" json:"clock_untrusted,omitempty"`
}

// Accepted is a record the gateway accepted, with what its cloud message
// says about it: the input of [Entry] and [Encode].
type Accepted struct {
	// Site and GW name the gateway.
	Site, GW string
	// RX is when the gateway accepted the record, in Unix milliseconds.
	RX int64
	// Rec is the decoded record: it gives the topic and id, and is the rec
	// of a JSON message.
	Rec *telemetry.Record
	// Raw is the record's CBOR as the device signed it (Rec decodes from
	// it): the rec of a CBOR message, copied unchanged.
	Raw []byte
	// Sig is the device's COSE_Sign1, the sig of the message.
	Sig []byte
	// FWBelowMin marks a device below its model's minimum firmware: the
	// optional fw_below_min of the message, present only when true.
	FWBelowMin bool
	// ClockUntrusted marks a record accepted while the gateway's clock was
	// untrusted: the optional clock_untrusted, present only when true.
	ClockUntrusted bool
}

// Topic returns the topic of the cloud messages of a device's records of one
// kind: telemetry/{site}/{dev}/{kind}.
func Topic(site, dev, kind string) string {
	return "telemetry/" + site + "/" + dev + "/" + kind
}

// ID returns the id of the cloud message of a record: "{dev}:{seq}".
func ID(dev string, seq uint64) string {
	return dev + ":" + strconv.FormatUint(seq, 10)
}
