package telemetry

import (
	"strings"

	"github.com/vitalgate/vitalgate/internal/verdict"
)

// KindStatus is the kind of a status record (docs/protocol.md#status-records):
// what a device reports of itself on devices/{id}/status, at every connect
// and at each state change of an update job.
const KindStatus = "status"

// States of an update job a status record may report, in the order a
// device goes through them; succeeded, failed and rejected are final.
const (
	StateDownloading = "downloading"
	StateInstalling  = "installing"
	StateSucceeded   = "succeeded"
	StateFailed      = "failed"
	StateRejected    = "rejected"
)

// Bounds of a status record's text fields.
const (
	// MaxStatusPayload is the size limit of a status record: it carries no
	// measurements.
	MaxStatusPayload = 1 << 10
	maxModelLen      = 64
	maxVersionLen    = 64
	maxJobLen        = 64
	maxReasonLen     = 200
)

// Status is a device's signed report of itself: its model and installed
// firmware, and, during an update job, the job's state on the device. It
// shares the device's seq counter (and so its replay window) with its
// telemetry records.
type Status struct {
	V      int     `cbor:"v" json:"v"`
	Dev    string  `cbor:"dev" json:"dev"`
	Seq    uint64  `cbor:"seq" json:"seq"`
	TS     int64   `cbor:"ts" json:"ts"`
	Kind   string  `cbor:"kind" json:"kind"`
	Model  string  `cbor:"model" json:"model"`
	FW     string  `cbor:"fw" json:"fw"`
	FWSeq  uint64  `cbor:"fw_seq" json:"fw_seq"`
	Bat    *uint8  `cbor:"bat,omitempty" json:"bat,omitempty"`
	Job    *string `cbor:"job,omitempty" json:"job,omitempty"`
	State  *string `cbor:"state,omitempty" json:"state,omitempty"`
	Reason *string `cbor:"reason,omitempty" json:"reason,omitempty"`
}

// wireStatus is what DecodeStatus reads: pointers tell a missing key from a
// zero value.
type wireStatus struct {
	V      *int    `cbor:"v"`
	Dev    *string `cbor:"dev"`
	Seq    *uint64 `cbor:"seq"`
	TS     *int64  `cbor:"ts"`
	Kind   *string `cbor:"kind"`
	Model  *string `cbor:"model"`
	FW     *string `cbor:"fw"`
	FWSeq  *uint64 `cbor:"fw_seq"`
	Bat    *uint8  `cbor:"bat"`
	Job    *string `cbor:"job"`
	State  *string `cbor:"state"`
	Reason *string `cbor:"reason"`
}

// DecodeStatus parses a status record strictly, with the rules of [Decode]
// (no duplicate or unknown keys, no indefinite lengths, tags, null or
// non-shortest heads, no trailing bytes) and a limit of
// [MaxStatusPayload] bytes: TooLarge over it, Malformed for anything that
// is not exactly one status record. Like Decode it does not judge the
// values: that is [Status.Check].
func DecodeStatus(b []byte) (*Status, error) {
	if len(b) > MaxStatusPayload {
		return nil, verdict.New(verdict.TooLarge, "status record of %d bytes, limit %d", len(b), MaxStatusPayload)
	}
	if len(b) == 0 || b[0]>>5 != 5 {
		return nil, verdict.New(verdict.Malformed, "status record: not a CBOR map")
	}
	var w wireStatus
	if err := decMode.Unmarshal(b, &w); err != nil {
		return nil, verdict.New(verdict.Malformed, "status record: %s", clip(err.Error(), 160))
	}
	if err := scan(b); err != nil {
		return nil, err
	}
	for _, k := range []struct {
		name string
		set  bool
	}{{"v", w.V != nil}, {"dev", w.Dev != nil}, {"seq", w.Seq != nil}, {"ts", w.TS != nil},
		{"kind", w.Kind != nil}, {"model", w.Model != nil}, {"fw", w.FW != nil}, {"fw_seq", w.FWSeq != nil}} {
		if !k.set {
			return nil, verdict.New(verdict.Malformed, "status record: missing key %q", k.name)
		}
	}
	return &Status{V: *w.V, Dev: *w.Dev, Seq: *w.Seq, TS: *w.TS, Kind: *w.Kind, Model: *w.Model,
		FW: *w.FW, FWSeq: *w.FWSeq, Bat: w.Bat, Job: w.Job, State: w.State, Reason: w.Reason}, nil
}

// EncodeStatus returns the deterministic CBOR encoding of s; it does not
// check the values.
func EncodeStatus(s *Status) ([]byte, error) {
	if s == nil {
		return nil, verdict.New(verdict.Malformed, "encode status: nil status")
	}
	return encMode.Marshal(s)
}

// Check judges a decoded status record's values: version 1, kind
// "status", a model, fw a semantic version, bat 0..100, a known state
// (with its job), bounded texts. It returns a [*verdict.Error] with
// verdict Schema for the first value that is wrong.
func (s *Status) Check() error {
	bad := func(format string, a ...any) error {
		return verdict.New(verdict.Schema, "status record: "+format, a...)
	}
	switch {
	case s.V != Version:
		return bad("version %d, want %d", s.V, Version)
	case s.Kind != KindStatus:
		return bad("kind %q, want %q", shorten(s.Kind, 32), KindStatus)
	case s.Model == "" || len(s.Model) > maxModelLen:
		return bad("model of %d bytes, want 1 to %d", len(s.Model), maxModelLen)
	case !ValidSemver(s.FW):
		return bad("fw %q is not a semantic version", shorten(s.FW, 32))
	case s.Bat != nil && *s.Bat > 100:
		return bad("bat %d over 100", *s.Bat)
	case s.Job != nil && (*s.Job == "" || len(*s.Job) > maxJobLen):
		return bad("job of %d bytes, want 1 to %d", len(*s.Job), maxJobLen)
	case s.Reason != nil && len(*s.Reason) > maxReasonLen:
		return bad("reason of %d bytes, limit %d", len(*s.Reason), maxReasonLen)
	case s.State == nil:
		return nil
	case s.Job == nil:
		return bad("state %q without a job", shorten(*s.State, 32))
	}
	switch *s.State {
	case StateDownloading, StateInstalling, StateSucceeded, StateFailed, StateRejected:
		return nil
	}
	return bad("unknown state %q", shorten(*s.State, 32))
}

// Final reports whether state ends a job on the device.
func Final(state string) bool {
	return state == StateSucceeded || state == StateFailed || state == StateRejected
}

// StatusCheck is [CheckRecord] for a status record: decoding
// ([DecodeStatus]), identity, replay, time, rate, values ([Status.Check]),
// in that order. g's checks get the record's header (v, dev, seq, ts,
// kind, bat) as a [Record] without observations: the replay window and the
// rate are the device's, whatever it sends.
func StatusCheck(payload []byte, c *RecordCheck, g *GatewayChecks) (*Status, error) {
	s, err := DecodeStatus(payload)
	if err != nil {
		return nil, err
	}
	if s.Dev != c.Dev {
		return s, verdict.New(verdict.IdentityMismatch, "status record dev %q on connection of %q", shorten(s.Dev, 80), c.Dev)
	}
	head := &Record{V: s.V, Dev: s.Dev, Seq: s.Seq, TS: s.TS, Kind: s.Kind, Bat: s.Bat}
	if g != nil && g.Replay != nil {
		if err := g.Replay(head); err != nil {
			return s, err
		}
	}
	if err := c.checkTime(s.TS); err != nil {
		return s, err
	}
	if g != nil && g.Rate != nil {
		if err := g.Rate(head); err != nil {
			return s, err
		}
	}
	return s, s.Check()
}

// ValidSemver reports whether v is a semantic version (semver.org 2.0.0:
// MAJOR.MINOR.PATCH, numbers without leading zeros, optional -pre-release
// and +build of [0-9A-Za-z-] identifiers), at most 64 bytes.
func ValidSemver(v string) bool {
	if v == "" || len(v) > maxVersionLen {
		return false
	}
	core, build, hasBuild := strings.Cut(v, "+")
	if hasBuild && !idents(build, false) {
		return false
	}
	core, pre, hasPre := strings.Cut(core, "-")
	if hasPre && !idents(pre, true) {
		return false
	}
	n := 0
	for part := range splitDots(core) {
		if !numeric(part) {
			return false
		}
		n++
	}
	return n == 3
}

// splitDots yields the dot-separated parts of s.
func splitDots(s string) func(func(string) bool) {
	return func(yield func(string) bool) {
		start := 0
		for i := 0; i <= len(s); i++ {
			if i == len(s) || s[i] == '.' {
				if !yield(s[start:i]) {
					return
				}
				start = i + 1
			}
		}
	}
}

// numeric: digits, no leading zero unless "0".
func numeric(p string) bool {
	if p == "" || (len(p) > 1 && p[0] == '0') {
		return false
	}
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return false
		}
	}
	return true
}

// idents: non-empty dot-separated identifiers of [0-9A-Za-z-]; in a
// pre-release a numeric identifier has no leading zero.
func idents(s string, pre bool) bool {
	for p := range splitDots(s) {
		if p == "" {
			return false
		}
		digits := true
		for i := 0; i < len(p); i++ {
			c := p[i]
			switch {
			case c >= '0' && c <= '9':
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '-':
				digits = false
			default:
				return false
			}
		}
		if pre && digits && !numeric(p) {
			return false
		}
	}
	return true
}
