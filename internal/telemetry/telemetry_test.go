package telemetry_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/envelope/testvectors"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// TestVectors runs the record half of the shared table.
func TestVectors(t *testing.T) {
	n := 0
	for _, c := range testvectors.Cases() {
		if c.Stage != testvectors.StageRecord {
			continue
		}
		n++
		err := testvectors.CheckRecord(c.Payload)
		if got := verdict.Of(err); got != c.Verdict {
			t.Errorf("%s: verdict %q (%v), want %q", c.Name, got, err, c.Verdict)
			continue
		}
		if err != nil {
			var ve *verdict.Error
			if !errors.As(err, &ve) {
				t.Errorf("%s: %T is not a *verdict.Error", c.Name, err)
			}
			if !strings.Contains(ve.Detail, c.Detail) {
				t.Errorf("%s: detail %q does not contain %q", c.Name, ve.Detail, c.Detail)
			}
			if len(ve.Detail) > 300 {
				t.Errorf("%s: detail of %d bytes", c.Name, len(ve.Detail))
			}
		}
	}
	if n < 50 {
		t.Fatalf("only %d record cases", n)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, r := range []*telemetry.Record{testvectors.SpO2Record(), testvectors.ECGRecord(250)} {
		b, err := telemetry.Encode(r)
		if err != nil {
			t.Fatal(err)
		}
		got, err := telemetry.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Errorf("round trip of %s: got %+v", r.Kind, got)
		}
		again, err := telemetry.Encode(got)
		if err != nil || !bytes.Equal(again, b) {
			t.Errorf("%s: encoding is not deterministic", r.Kind)
		}
	}
	// the spo2 record's bytes are part of the vectors documentation: pin its size
	b, _ := telemetry.Encode(testvectors.SpO2Record())
	if len(b) > 160 {
		t.Errorf("spo2 record is %d bytes", len(b))
	}
}

func TestEncodeRefusesNonFinite(t *testing.T) {
	for _, v := range []telemetry.Value{telemetry.Scalar(math.NaN()), telemetry.Scalar(math.Inf(-1)),
		telemetry.Waveform([]float64{1, math.Inf(1)})} {
		r := testvectors.SpO2Record()
		r.Obs[0].Val = v
		if _, err := telemetry.Encode(r); err == nil {
			t.Errorf("Encode accepted %v", v)
		}
		if _, err := json.Marshal(r); err == nil {
			t.Errorf("json accepted %v", v)
		}
	}
	if _, err := telemetry.Encode(nil); err == nil {
		t.Error("Encode(nil) succeeded")
	}
}

func TestValueNumbers(t *testing.T) {
	cases := []struct {
		in   []byte
		want float64
	}{
		{[]byte{0x18, 0x61}, 97},
		{[]byte{0x20}, -1},
		{[]byte{0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, -18446744073709551616},
		{[]byte{0xf9, 0x3c, 0x00}, 1},
		{[]byte{0xf9, 0xc0, 0x00}, -2},
		{[]byte{0xf9, 0x00, 0x01}, math.Ldexp(1, -24)}, // smallest subnormal
		{[]byte{0xf9, 0x7b, 0xff}, 65504},
		{[]byte{0xf9, 0x00, 0x00}, 0},
		{[]byte{0xfb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0}, 1}, // floats may be wider than needed
		{[]byte{0xfa, 0x3f, 0xc0, 0x00, 0x00}, 1.5},
		{[]byte{0xfb, 0x40, 0x42, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66}, 36.8},
	}
	for _, c := range cases {
		var v telemetry.Value
		if err := v.UnmarshalCBOR(c.in); err != nil || v.Num != c.want || v.Samples != nil || math.Signbit(v.Num) != math.Signbit(c.want) {
			t.Errorf("% x: got %v %v, want %v", c.in, v, err, c.want)
		}
	}
	for _, bad := range [][]byte{nil, {0xf9, 0x7c, 0x00}, {0xf9, 0xfc, 0x00}, {0xf9, 0x7e, 0x00}, {0xf4}, {0xf6},
		{0x61, 'a'}, {0x41, 1}, {0x82, 0x01}, {0x81, 0x01, 0x02}, {0x18}, {0x9f, 0x01, 0xff}, {0x81, 0x81, 0x01},
		{0xc1, 0x01}, {0x01, 0x02}, {0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		// negative zero in every width, as a value and as a sample
		{0xf9, 0x80, 0x00}, {0xfa, 0x80, 0, 0, 0}, {0xfb, 0x80, 0, 0, 0, 0, 0, 0, 0},
		{0x81, 0xf9, 0x80, 0x00}, {0x81, 0xfa, 0x80, 0, 0, 0}, {0x81, 0xfb, 0x80, 0, 0, 0, 0, 0, 0},
		// non-minimal heads: integers, negative integers, array lengths
		{0x18, 0x17}, {0x19, 0x00, 0xff}, {0x1a, 0x00, 0x00, 0xff, 0xff}, {0x1b, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff},
		{0x38, 0x00}, {0x98, 0x01, 0x01}, {0x81, 0x18, 0x01}} {
		var v telemetry.Value
		if err := v.UnmarshalCBOR(bad); err == nil {
			t.Errorf("% x: accepted as %v", bad, v)
		}
	}
	var v telemetry.Value
	if err := v.UnmarshalCBOR([]byte{0x83, 0x01, 0xf9, 0x3c, 0x00, 0x20}); err != nil || !reflect.DeepEqual(v.Samples, []float64{1, 1, -1}) {
		t.Errorf("samples: %v %v", v, err)
	}
}

// TestDecodeRefusesNonMinimalHeads widens each head (integer, length) of
// real records in turn, keeping its value: Decode refuses every one.
func TestDecodeRefusesNonMinimalHeads(t *testing.T) {
	for _, r := range []*telemetry.Record{testvectors.SpO2Record(), testvectors.ECGRecord(3)} {
		b, err := telemetry.Encode(r)
		if err != nil {
			t.Fatal(err)
		}
		hs, err := testvectors.Heads(b)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, h := range hs {
			if !h.Minimal {
				t.Fatalf("%s: Encode wrote a non-minimal head at byte %d", r.Kind, h.Off)
			}
			if b[h.Off]&0x1f == 27 {
				continue // 8-byte argument: no longer form
			}
			n++
			_, err := telemetry.Decode(testvectors.Widen(b, h.Off))
			if verdict.Of(err) != verdict.Malformed || !strings.Contains(err.Error(), "non-minimal CBOR head") {
				t.Errorf("%s: head at byte %d (0x%02x) widened: %v", r.Kind, h.Off, b[h.Off], err)
			}
		}
		if n < 20 {
			t.Fatalf("%s: only %d heads", r.Kind, n)
		}
	}
}

// TestDecodeRefusesSimpleValues: a small integer written as a CBOR simple
// value (simple(15) for 15: the decoder would read it as the number, a
// second encoding of it) is malformed, in a record and in a status record.
func TestDecodeRefusesSimpleValues(t *testing.T) {
	rec, err := telemetry.Encode(testvectors.SpO2Record())
	if err != nil {
		t.Fatal(err)
	}
	st, err := telemetry.EncodeStatus(&telemetry.Status{V: 1, Dev: "oxi-1", Seq: 7, TS: 15, Kind: "status", Model: "m", FW: "1.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"record": rec, "status": st} {
		i := bytes.Index(b, []byte{0x61, 'v', 0x01})
		if i < 0 {
			t.Fatalf("%s: no v: 1", name)
		}
		bad := bytes.Clone(b)
		bad[i+2] = 0xe1 // simple(1) for the integer 1
		var derr error
		if name == "record" {
			_, derr = telemetry.Decode(bad)
		} else {
			_, derr = telemetry.DecodeStatus(bad)
		}
		if verdict.Of(derr) != verdict.Malformed || !strings.Contains(derr.Error(), "simple value") {
			t.Errorf("%s with v as simple(1): %v, want malformed", name, derr)
		}
	}
}

// TestEncodeNegativeZero: Encode writes a negative zero as 0, which Decode
// accepts, and leaves the caller's samples alone.
func TestEncodeNegativeZero(t *testing.T) {
	negZero := math.Copysign(0, -1)
	r := testvectors.ECGRecord(3)
	r.Obs[0].Val.Samples[1] = negZero
	s := testvectors.SpO2Record()
	s.Obs[0].Val = telemetry.Scalar(negZero)
	for _, rec := range []*telemetry.Record{r, s} {
		b, err := telemetry.Encode(rec)
		if err != nil {
			t.Fatal(err)
		}
		got, err := telemetry.Decode(b)
		if err != nil {
			t.Fatalf("%s: %v", rec.Kind, err)
		}
		if v := got.Obs[0].Val; math.Signbit(v.Num) || (v.Samples != nil && math.Signbit(v.Samples[1])) {
			t.Errorf("%s: decoded %v", rec.Kind, v)
		}
	}
	if !math.Signbit(r.Obs[0].Val.Samples[1]) {
		t.Error("Encode changed the caller's samples")
	}
}

func TestValueJSON(t *testing.T) {
	r := testvectors.ECGRecord(3)
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"val":[`)) || !bytes.Contains(b, []byte(`"period_ms":4`)) {
		t.Errorf("json: %s", b)
	}
	var back telemetry.Record
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(&back, r) {
		t.Errorf("json round trip: %v %+v", err, back)
	}
	b, _ = json.Marshal(testvectors.SpO2Record())
	if !bytes.Contains(b, []byte(`"val":97,`)) {
		t.Errorf("json: %s", b)
	}
	var v telemetry.Value
	for _, bad := range []string{`"97"`, `[1,"2"]`, `{}`, `true`, `[[1]]`} {
		if err := json.Unmarshal([]byte(bad), &v); err == nil {
			t.Errorf("json %s accepted", bad)
		}
	}
}

func TestDecodeSize(t *testing.T) {
	_, err := telemetry.Decode(make([]byte, telemetry.MaxPayload+1))
	if verdict.Of(err) != verdict.TooLarge {
		t.Errorf("oversized: %v", err)
	}
}

func TestDefaultSchemasTable(t *testing.T) {
	s := telemetry.DefaultSchemas()
	if got := strings.Join(s.Kinds(), ","); got != "bp,ecg,glucose,spo2,temp,weight" {
		t.Errorf("kinds %s", got)
	}
	// docs/protocol.md#the-record, row by row
	want := map[string][]telemetry.ObsSpec{
		"spo2": {{Code: "MDC_PULS_OXIM_SAT_O2", Unit: "%", Min: 0, Max: 100, Required: true},
			{Code: "MDC_PULS_OXIM_PULS_RATE", Unit: "/min", Min: 20, Max: 350, Required: true}},
		"bp": {{Code: "MDC_PRESS_BLD_NONINV_SYS", Unit: "mm[Hg]", Min: 20, Max: 300, Required: true},
			{Code: "MDC_PRESS_BLD_NONINV_DIA", Unit: "mm[Hg]", Min: 10, Max: 250, Required: true},
			{Code: "MDC_PRESS_BLD_NONINV_MEAN", Unit: "mm[Hg]", Min: 15, Max: 260, Required: true},
			{Code: "MDC_PULS_RATE_NON_INV", Unit: "/min", Min: 20, Max: 350}},
		"glucose": {{Code: "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD", Unit: "mg/dL", Min: 10, Max: 1000, Required: true}},
		"temp":    {{Code: "MDC_TEMP_BODY", Unit: "Cel", Min: 25, Max: 45, Required: true}},
		"weight":  {{Code: "MDC_MASS_BODY_ACTUAL", Unit: "kg", Min: 0.5, Max: 500, Required: true}},
		"ecg":     {{Code: "MDC_ECG_ELEC_POTL_II", Unit: "mV", Min: -10, Max: 10, Required: true, Waveform: true}},
	}
	for kind, w := range want {
		got, ok := s.Spec(kind)
		if !ok || !reflect.DeepEqual(got, w) {
			t.Errorf("%s: %+v", kind, got)
		}
	}
	if !bytes.Equal(telemetry.DefaultSchemasYAML(), telemetry.DefaultSchemasYAML()) || len(telemetry.DefaultSchemasYAML()) == 0 {
		t.Error("DefaultSchemasYAML")
	}
}

func TestLoadSchemas(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// a deployment extends the defaults with a kind of its own
	ext := string(telemetry.DefaultSchemasYAML()) + `
  resp:
    obs:
      - {code: MDC_RESP_RATE, unit: /min, min: 1, max: 120, required: true}
`
	s, err := telemetry.LoadSchemas(write("ext.yaml", ext))
	if err != nil {
		t.Fatal(err)
	}
	r := testvectors.SpO2Record()
	r.Kind = "resp"
	r.Obs = []telemetry.Observation{{Code: "MDC_RESP_RATE", Val: telemetry.Scalar(16), Unit: "/min"}}
	if err := s.Check(r); err != nil {
		t.Errorf("resp: %v", err)
	}
	if err := telemetry.DefaultSchemas().Check(r); verdict.Of(err) != verdict.Schema {
		t.Errorf("default schemas know resp: %v", err)
	}
	r.Obs[0].Val = telemetry.Scalar(200)
	if err := s.Check(r); err == nil || !strings.Contains(err.Error(), "resp: MDC_RESP_RATE 200 /min outside 1..120") {
		t.Errorf("resp 200: %v", err)
	}

	bad := []struct{ body, want string }{
		{"kinds:\n  x:\n    obs:\n      - {code: A, unit: u, min: 0, max: 1, required: true, colour: red}\n", "colour"},
		{"kinds:\n  x:\n    obs:\n      - {code: A, unit: u, min: 2, max: 1, required: true}\n", "bad range"},
		{"kinds:\n  x:\n    obs:\n      - {code: A, unit: u, max: 1, required: true}\n", "min and max are required"},
		{"kinds:\n  x:\n    obs:\n      - {code: A, min: 0, max: 1, required: true}\n", "no unit"},
		{"kinds:\n  x:\n    obs:\n      - {code: A, unit: u, min: 0, max: 1}\n", "no required code"},
		{"kinds:\n  x:\n    obs:\n      - {code: A, unit: u, min: 0, max: 1, required: true}\n      - {code: A, unit: u, min: 0, max: 1}\n", "duplicate code A"},
		{"kinds:\n  x:\n    obs:\n      - {code: A, unit: u, min: 0, max: 1, required: true}\n    rules:\n      - greater: [A, B]\n", "two different codes"},
		{"kinds:\n  x:\n    obs:\n      - {code: A, unit: u, min: 0, max: 1, required: true, waveform: true}\n      - {code: B, unit: u, min: 0, max: 1}\n    rules:\n      - greater: [A, B]\n", "scalar codes only"},
		{"kinds: {}\n", "no kinds"},
		{"kinds:\n  x: {}\n  y:\n    obs:\n      - {code: A, unit: u, min: 0, max: .nan, required: true}\n", "kind x: no obs"},
		{"- a\n", "cannot unmarshal"},
	}
	for i, c := range bad {
		_, err := telemetry.LoadSchemas(write("bad.yaml", c.body))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "bad.yaml") {
			t.Errorf("bad %d: %v, want %q", i, err, c.want)
		}
	}
	// every problem is reported at once
	_, err = telemetry.LoadSchemas(write("bad.yaml", "kinds:\n  x:\n    obs:\n      - {code: A, unit: u, min: 2, max: 1, required: true}\n  y:\n    obs:\n      - {code: B, min: 0, max: 1, required: true}\n"))
	if err == nil || !strings.Contains(err.Error(), "bad range") || !strings.Contains(err.Error(), "no unit") {
		t.Errorf("not all problems reported: %v", err)
	}
	if _, err := telemetry.LoadSchemas(filepath.Join(dir, "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestCheckNeverClamps(t *testing.T) {
	r := testvectors.SpO2Record()
	r.Obs[0].Val = telemetry.Scalar(100.5)
	if err := telemetry.DefaultSchemas().Check(r); verdict.Of(err) != verdict.Schema {
		t.Errorf("100.5%%: %v", err)
	}
	if r.Obs[0].Val.Num != 100.5 {
		t.Error("value changed")
	}
	if err := telemetry.DefaultSchemas().Check(nil); verdict.Of(err) != verdict.Schema {
		t.Errorf("nil: %v", err)
	}
	w := testvectors.ECGRecord(telemetry.MaxSamples + 1)
	if err := telemetry.DefaultSchemas().Check(w); err == nil || !strings.Contains(err.Error(), "max 4096") {
		t.Errorf("4097 samples: %v", err)
	}
}

func TestCheckTime(t *testing.T) {
	now := time.UnixMilli(1_800_000_000_000)
	ms := now.UnixMilli()
	cases := []struct {
		ts     int64
		maxAge time.Duration
		want   verdict.Verdict
	}{
		{ms, 0, verdict.Accepted},
		{ms + 5*60_000, 0, verdict.Accepted},
		{ms + 5*60_000 + 1, 0, verdict.Future},
		{ms - 7*24*3600_000, 0, verdict.Accepted},
		{ms - 7*24*3600_000 - 1, 0, verdict.Stale},
		{ms - 3600_001, time.Hour, verdict.Stale},
		{ms - 3600_000, time.Hour, verdict.Accepted},
		{math.MinInt64, 0, verdict.Stale},
		{math.MaxInt64, 0, verdict.Future},
	}
	for _, c := range cases {
		if got := verdict.Of(telemetry.CheckTime(c.ts, now, c.maxAge)); got != c.want {
			t.Errorf("ts %d maxAge %s: %s, want %s", c.ts, c.maxAge, got, c.want)
		}
	}
}

// TestCheckRecordClockUntrusted: with an untrusted clock the time check is
// skipped (the gateway stores and marks the record); every other check stays.
func TestCheckRecordClockUntrusted(t *testing.T) {
	r := testvectors.SpO2Record()
	b, err := telemetry.Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, now := range []time.Time{time.UnixMilli(r.TS).Add(-10 * 365 * 24 * time.Hour), time.UnixMilli(r.TS).Add(10 * 365 * 24 * time.Hour)} {
		c := &telemetry.RecordCheck{Dev: r.Dev, Now: now, Schemas: telemetry.DefaultSchemas()}
		if _, err := telemetry.CheckRecord(b, c, nil); verdict.Of(err) == verdict.Accepted {
			t.Fatalf("now %v with a trusted clock: accepted", now)
		}
		c.ClockUntrusted = true
		if _, err := telemetry.CheckRecord(b, c, nil); err != nil {
			t.Fatalf("now %v with an untrusted clock: %v", now, err)
		}
		c.Dev = "someone-else"
		if _, err := telemetry.CheckRecord(b, c, nil); verdict.Of(err) != verdict.IdentityMismatch {
			t.Fatalf("an untrusted clock skips only the time check: %v", err)
		}
	}
}

// FuzzDecode: Decode never panics, fails only with malformed/too_large,
// allocates a bounded amount, accepts only minimal heads (by an independent
// walker), and what it accepts re-encodes to itself.
func FuzzDecode(f *testing.F) {
	for _, c := range testvectors.Cases() {
		if c.Payload != nil {
			f.Add(c.Payload)
		}
		f.Add(c.Msg)
	}
	schemas := telemetry.DefaultSchemas()
	f.Fuzz(func(t *testing.T, b []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		r, err := telemetry.Decode(b)
		runtime.ReadMemStats(&after)
		if d := after.TotalAlloc - before.TotalAlloc; d > 4<<20 {
			t.Fatalf("Decode of %d bytes allocated %d bytes", len(b), d)
		}
		if err != nil {
			if v := verdict.Of(err); v != verdict.Malformed && v != verdict.TooLarge {
				t.Fatalf("verdict %q: %v", v, err)
			}
			return
		}
		if hs, err := testvectors.Heads(b); err != nil {
			t.Fatalf("accepted, but not well-formed: %v", err)
		} else {
			for _, h := range hs {
				if !h.Minimal {
					t.Fatalf("accepted a non-minimal head at byte %d", h.Off)
				}
			}
		}
		if err := schemas.Check(r); err != nil && verdict.Of(err) != verdict.Schema {
			t.Fatalf("Check: %v", err)
		}
		_ = telemetry.CheckTime(r.TS, time.Now(), 0)
		enc, err := telemetry.Encode(r)
		if err != nil {
			t.Fatalf("Encode of a decoded record: %v", err)
		}
		if len(enc) > telemetry.MaxPayload {
			return // ints re-encode as floats: a little larger
		}
		back, err := telemetry.Decode(enc)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if !reflect.DeepEqual(back, r) {
			t.Fatalf("round trip changed the record:\n%+v\n%+v", r, back)
		}
	})
}
