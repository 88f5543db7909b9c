// Package telemetry is the device record of docs/protocol.md#3-the-message-cose_sign1-around-a-cbor-record: its Go
// form, its strict CBOR decoding, its deterministic encoding, and the
// per-kind schemas that decide whether a decoded record is plausible.
//
// # Pipeline
//
// [CheckRecord] is the gateway's record check, shared with the test
// vectors; each step returns a [*verdict.Error] on rejection:
//
//  1. [Decode]: size, then strict CBOR (malformed / too_large).
//  2. identity: the record's dev is the connection's device
//     (identity_mismatch).
//  3. the gateway's replay check (replay).
//  4. [CheckTime]: the measurement time window (future / stale).
//  5. the gateway's rate check (rate_limited).
//  6. [Schemas.Check]: version, kind, codes, units, ranges (schema).
//
// # Strictness
//
// [Decode] refuses duplicate map keys, indefinite lengths, unknown keys,
// non-text keys, tags, nesting deeper than [MaxDepth], missing keys, wrong
// types, null and undefined (also for the optional keys), NaN, infinities and
// negative zero, heads (integers, lengths) not in their shortest form (RFC
// 8949 section 4.2.1; floats may have any width), and trailing bytes. It
// never clamps or repairs.
//
// # Schemas
//
// Schemas are data: [DefaultSchemas] reads the embedded schemas.yaml (the
// table of docs/protocol.md#the-record) and [LoadSchemas] reads a deployment's own
// file in the same format, which may add kinds.
package telemetry

import (
	"fmt"

	"github.com/fxamacker/cbor/v2"

	"github.com/vitalgate/vitalgate/internal/verdict"
)

// Limits of the record format.
const (
	// MaxPayload is the default size limit of a record, and the base of the
	// size limit of the COSE message around it.
	MaxPayload = 64 << 10
	// MaxDepth is the deepest nesting a record may use: record map, obs
	// array, observation map, samples array.
	MaxDepth = 4
	// MaxObservations is the most observations one record may carry.
	MaxObservations = 64
	// MaxSamples is the most samples one waveform observation may carry.
	MaxSamples = 4096
	// Version is the only record format version this package accepts.
	Version = 1
)

// Record is one signed measurement report of a device (docs/protocol.md#3-the-message-cose_sign1-around-a-cbor-record).
type Record struct {
	V    int           `cbor:"v" json:"v"`
	Dev  string        `cbor:"dev" json:"dev"`
	Seq  uint64        `cbor:"seq" json:"seq"`
	TS   int64         `cbor:"ts" json:"ts"`
	Kind string        `cbor:"kind" json:"kind"`
	Obs  []Observation `cbor:"obs" json:"obs"`
	Bat  *uint8        `cbor:"bat,omitempty" json:"bat,omitempty"`
}

// Observation is one coded value (or waveform) of a record.
type Observation struct {
	Code     string  `cbor:"code" json:"code"`
	Val      Value   `cbor:"val" json:"val"`
	Unit     string  `cbor:"unit" json:"unit"`
	PeriodMS *uint64 `cbor:"period_ms,omitempty" json:"period_ms,omitempty"`
}

// wireRecord is what Decode reads: pointers tell a missing key from a zero
// value, so that a record without "v" or "seq" is malformed, not version 0.
type wireRecord struct {
	V    *int      `cbor:"v"`
	Dev  *string   `cbor:"dev"`
	Seq  *uint64   `cbor:"seq"`
	TS   *int64    `cbor:"ts"`
	Kind *string   `cbor:"kind"`
	Obs  []wireObs `cbor:"obs"`
	Bat  *uint8    `cbor:"bat"`
}

type wireObs struct {
	Code     *string   `cbor:"code"`
	Val      wireValue `cbor:"val"`
	Unit     *string   `cbor:"unit"`
	PeriodMS *uint64   `cbor:"period_ms"`
}

// wireValue is a Value that remembers whether it was present.
type wireValue struct {
	v   Value
	set bool
}

// UnmarshalCBOR implements cbor.Unmarshaler.
func (w *wireValue) UnmarshalCBOR(b []byte) error {
	if err := w.v.UnmarshalCBOR(b); err != nil {
		return err
	}
	w.set = true
	return nil
}

var (
	decMode cbor.DecMode
	encMode cbor.EncMode
)

func init() {
	var err error
	decMode, err = cbor.DecOptions{
		DupMapKey:           cbor.DupMapKeyEnforcedAPF,
		IndefLength:         cbor.IndefLengthForbidden,
		TagsMd:              cbor.TagsForbidden,
		ExtraReturnErrors:   cbor.ExtraDecErrorUnknownField,
		MaxNestedLevels:     MaxDepth,
		MaxArrayElements:    MaxSamples,
		MaxMapPairs:         16,
		UTF8:                cbor.UTF8RejectInvalid,
		FieldNameMatching:   cbor.FieldNameMatchingCaseSensitive,
		FieldNameByteString: cbor.FieldNameByteStringForbidden,
	}.DecMode()
	if err != nil {
		panic(fmt.Sprintf("telemetry: decode mode: %v", err))
	}
	encMode, err = cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(fmt.Sprintf("telemetry: encode mode: %v", err))
	}
}

// Decode parses a record strictly. It returns a [*verdict.Error] with
// verdict TooLarge when b exceeds [MaxPayload], and Malformed when b is not
// exactly one record as docs/protocol.md#3-the-message-cose_sign1-around-a-cbor-record defines it. Decode does not
// judge the values: that is [Schemas.Check] and [CheckTime].
func Decode(b []byte) (*Record, error) {
	if len(b) > MaxPayload {
		return nil, verdict.New(verdict.TooLarge, "record of %d bytes, limit %d", len(b), MaxPayload)
	}
	if len(b) == 0 {
		return nil, verdict.New(verdict.Malformed, "record: empty")
	}
	if b[0]>>5 != 5 { // major type 5: map
		return nil, verdict.New(verdict.Malformed, "record: not a CBOR map")
	}
	var w wireRecord
	if err := decMode.Unmarshal(b, &w); err != nil {
		return nil, verdict.New(verdict.Malformed, "record: %s", clip(err.Error(), 160))
	}
	if err := scan(b); err != nil {
		return nil, err
	}
	switch {
	case w.V == nil:
		return nil, missing("v")
	case w.Dev == nil:
		return nil, missing("dev")
	case w.Seq == nil:
		return nil, missing("seq")
	case w.TS == nil:
		return nil, missing("ts")
	case w.Kind == nil:
		return nil, missing("kind")
	case w.Obs == nil:
		return nil, missing("obs")
	}
	r := &Record{V: *w.V, Dev: *w.Dev, Seq: *w.Seq, TS: *w.TS, Kind: *w.Kind, Bat: w.Bat,
		Obs: make([]Observation, len(w.Obs))}
	for i := range w.Obs {
		o := &w.Obs[i]
		switch {
		case o.Code == nil:
			return nil, verdict.New(verdict.Malformed, "record: obs %d: missing key \"code\"", i)
		case !o.Val.set:
			return nil, verdict.New(verdict.Malformed, "record: obs %d: missing key \"val\"", i)
		case o.Unit == nil:
			return nil, verdict.New(verdict.Malformed, "record: obs %d: missing key \"unit\"", i)
		}
		r.Obs[i] = Observation{Code: *o.Code, Val: o.Val.v, Unit: *o.Unit, PeriodMS: o.PeriodMS}
	}
	return r, nil
}

func missing(key string) error {
	return verdict.New(verdict.Malformed, "record: missing key %q", key)
}

// Encode returns the deterministic (RFC 8949 core deterministic) CBOR
// encoding of r. It refuses NaN and infinite values; it does not check the
// schema.
func Encode(r *Record) ([]byte, error) {
	if r == nil {
		return nil, fmt.Errorf("encode record: nil record")
	}
	b, err := encMode.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode record: %w", err)
	}
	return b, nil
}

// clip shortens s to at most n bytes for a log-safe detail; peer-controlled
// strings can be as long as the payload.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
