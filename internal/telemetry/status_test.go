package telemetry_test

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

func ptr[T any](v T) *T { return &v }

func validStatus() *telemetry.Status {
	return &telemetry.Status{V: 1, Dev: "oxi-1", Seq: 7, TS: time.Now().UnixMilli(), Kind: "status",
		Model: "acme-oxi-1", FW: "1.2.0", FWSeq: 3, Bat: ptr(uint8(80)),
		Job: ptr("job-1"), State: ptr(telemetry.StateDownloading)}
}

func TestStatusRoundTrip(t *testing.T) {
	s := validStatus()
	b, err := telemetry.EncodeStatus(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := telemetry.DecodeStatus(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := got.Check(); err != nil {
		t.Fatal(err)
	}
	if got.Model != s.Model || got.FW != s.FW || got.FWSeq != 3 || *got.State != "downloading" || *got.Job != "job-1" || *got.Bat != 80 {
		t.Fatalf("decoded %+v", got)
	}
	again, _ := telemetry.EncodeStatus(got)
	if !bytes.Equal(b, again) {
		t.Fatal("encoding is not deterministic")
	}
}

// TestDecodeStatusStrict: what DecodeStatus refuses, and with which verdict.
func TestDecodeStatusStrict(t *testing.T) {
	enc := func(s *telemetry.Status) []byte {
		b, err := telemetry.EncodeStatus(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	h := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	noFW := validStatus()
	noFW.FW = ""
	// {"v":1, "v":1}: duplicate key
	dup := h("a2617601617601")
	// {"v": null}
	null := h("a16176f6")
	// a valid record with an unknown key "x": 1 appended (map of n+1)
	valid := enc(&telemetry.Status{V: 1, Dev: "d", Seq: 1, TS: 1, Kind: "status", Model: "m", FW: "1.0.0"})
	unknown := append([]byte{valid[0] + 1}, valid[1:]...)
	unknown = append(unknown, 0x61, 'x', 0x01)
	// seq 1 as a non-shortest head (0x18 0x01)
	nonMin := bytes.Replace(valid, []byte{0x63, 's', 'e', 'q', 0x01}, []byte{0x63, 's', 'e', 'q', 0x18, 0x01}, 1)
	missing := bytes.Replace(valid, []byte{0x66, 'f', 'w', '_', 's', 'e', 'q', 0x00}, nil, 1)
	missing[0]--
	cases := []struct {
		name   string
		b      []byte
		want   verdict.Verdict
		detail string
	}{
		{"empty", nil, verdict.Malformed, "not a CBOR map"},
		{"array", h("80"), verdict.Malformed, "not a CBOR map"},
		{"too large", append([]byte{0xa1}, make([]byte, telemetry.MaxStatusPayload)...), verdict.TooLarge, "limit 1024"},
		{"duplicate key", dup, verdict.Malformed, "duplicate"},
		{"null", null, verdict.Malformed, "null"},
		{"unknown key", unknown, verdict.Malformed, "unknown field"},
		{"non-minimal head", nonMin, verdict.Malformed, "non-minimal"},
		{"missing fw_seq", missing, verdict.Malformed, `missing key "fw_seq"`},
		{"trailing bytes", append(bytes.Clone(valid), 0x00), verdict.Malformed, ""},
	}
	for _, c := range cases {
		_, err := telemetry.DecodeStatus(c.b)
		if verdict.Of(err) != c.want || !strings.Contains(err.Error(), c.detail) {
			t.Errorf("%s: %v, want %s containing %q", c.name, err, c.want, c.detail)
		}
	}
	if _, err := telemetry.DecodeStatus(valid); err != nil {
		t.Errorf("valid record: %v", err)
	}
}

func TestStatusCheck(t *testing.T) {
	cases := []struct {
		name   string
		mod    func(*telemetry.Status)
		detail string
	}{
		{"version", func(s *telemetry.Status) { s.V = 2 }, "version 2"},
		{"kind", func(s *telemetry.Status) { s.Kind = "spo2" }, `kind "spo2"`},
		{"no model", func(s *telemetry.Status) { s.Model = "" }, "model of 0 bytes"},
		{"fw not semver", func(s *telemetry.Status) { s.FW = "1.02.0" }, "not a semantic version"},
		{"battery", func(s *telemetry.Status) { s.Bat = ptr(uint8(101)) }, "bat 101"},
		{"unknown state", func(s *telemetry.Status) { s.State = ptr("bricked") }, `unknown state "bricked"`},
		{"state without job", func(s *telemetry.Status) { s.Job = nil }, "without a job"},
		{"long reason", func(s *telemetry.Status) { s.Reason = ptr(strings.Repeat("x", 201)) }, "reason of 201 bytes"},
	}
	for _, c := range cases {
		s := validStatus()
		c.mod(s)
		err := s.Check()
		if verdict.Of(err) != verdict.Schema || !strings.Contains(err.Error(), c.detail) {
			t.Errorf("%s: %v, want schema containing %q", c.name, err, c.detail)
		}
	}
}

func TestValidSemver(t *testing.T) {
	for v, want := range map[string]bool{
		"1.0.0": true, "0.0.1": true, "10.20.30": true, "1.0.0-rc.1": true, "1.0.0-alpha-2+build.7": true,
		"1.0": false, "1.0.0.0": false, "01.0.0": false, "1.0.0-": false, "1.0.0-01": false, "v1.0.0": false,
		"1.0.0+": false, "1.0.0-a..b": false, "": false, "1.0.0-é": false,
	} {
		if got := telemetry.ValidSemver(v); got != want {
			t.Errorf("ValidSemver(%q) = %v, want %v", v, got, want)
		}
	}
}

// TestStatusCheckOrder: identity before replay, replay before time, and the
// gateway's checks see the record's seq.
func TestStatusCheckOrder(t *testing.T) {
	s := validStatus()
	s.TS = time.Now().Add(time.Hour).UnixMilli() // future
	b, _ := telemetry.EncodeStatus(s)
	var seen uint64
	g := &telemetry.GatewayChecks{Replay: func(r *telemetry.Record) error {
		seen = r.Seq
		return verdict.New(verdict.Replay, "replayed")
	}}
	c := &telemetry.RecordCheck{Dev: "other", Now: time.Now()}
	if _, err := telemetry.StatusCheck(b, c, g); verdict.Of(err) != verdict.IdentityMismatch {
		t.Fatalf("identity: %v", err)
	}
	c.Dev = "oxi-1"
	if _, err := telemetry.StatusCheck(b, c, g); verdict.Of(err) != verdict.Replay || seen != 7 {
		t.Fatalf("replay: %v (seq %d)", err, seen)
	}
	if _, err := telemetry.StatusCheck(b, c, nil); verdict.Of(err) != verdict.Future {
		t.Fatalf("future: %v", err)
	}
}

// FuzzDecodeStatus: a status record from a device never panics
// DecodeStatus, which fails only with malformed or too_large; what it
// accepts re-encodes to itself, and Check judges it with schema or nil.
func FuzzDecodeStatus(f *testing.F) {
	b, err := telemetry.EncodeStatus(validStatus())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add(b[:len(b)-1])
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := telemetry.DecodeStatus(b)
		if err != nil {
			if v := verdict.Of(err); v != verdict.Malformed && v != verdict.TooLarge {
				t.Fatalf("verdict %q: %v", v, err)
			}
			return
		}
		again, err := telemetry.EncodeStatus(s)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("accepted %x, re-encodes to %x (%v)", b, again, err)
		}
		if err := s.Check(); err != nil && verdict.Of(err) != verdict.Schema {
			t.Fatalf("Check: %v", err)
		}
	})
}
