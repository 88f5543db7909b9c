package view

import (
	"crypto/x509"
	"errors"
	"math"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/cloud"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/wire"
)

func rec(kind string, obs ...telemetry.Observation) *telemetry.Record {
	return &telemetry.Record{V: 1, Dev: "dev-1", Seq: 1, TS: 1767225600000, Kind: kind, Obs: obs}
}

func ob(code string, v float64, unit string) telemetry.Observation {
	return telemetry.Observation{Code: code, Val: telemetry.Scalar(v), Unit: unit}
}

func TestAbnormal(t *testing.T) {
	cases := []struct {
		code string
		val  float64
		want bool
	}{
		{telemetry.CodeSpO2, 97, false}, {telemetry.CodeSpO2, 92, false}, {telemetry.CodeSpO2, 91, true}, {telemetry.CodeSpO2, 70, true},
		{telemetry.CodeSpO2Pulse, 72, false}, {telemetry.CodeSpO2Pulse, 120, false}, {telemetry.CodeSpO2Pulse, 121, true}, {telemetry.CodeSpO2Pulse, 49, true}, {telemetry.CodeSpO2Pulse, 50, false},
		{telemetry.CodeBPPulse, 130, true}, {CodeHeartRate, 45, true}, {CodeHeartRate, 72, false},
		{telemetry.CodeSys, 139, false}, {telemetry.CodeSys, 140, true}, {telemetry.CodeSys, 90, false}, {telemetry.CodeSys, 89, true},
		{telemetry.CodeDia, 89, false}, {telemetry.CodeDia, 90, true},
		{telemetry.CodeGlucose, 180, false}, {telemetry.CodeGlucose, 181, true}, {telemetry.CodeGlucose, 70, false}, {telemetry.CodeGlucose, 69, true},
		{telemetry.CodeTemp, 37.9, false}, {telemetry.CodeTemp, 38, true}, {telemetry.CodeTemp, 34.9, true},
		{telemetry.CodeWeight, 250, false}, {telemetry.CodeMean, 200, false}, {"MDC_SOMETHING_ELSE", 1e6, false},
	}
	for _, c := range cases {
		if got := Abnormal(c.code, c.val); got != c.want {
			t.Errorf("Abnormal(%s, %v) = %v, want %v", c.code, c.val, got, c.want)
		}
	}
}

func TestVitals(t *testing.T) {
	period := uint64(4)
	cases := []struct {
		name string
		rec  *telemetry.Record
		hr   float64
		want string // fields joined by " | ", abnormal ones prefixed with "!"
	}{
		{"spo2", rec("spo2", ob(telemetry.CodeSpO2, 97, "%"), ob(telemetry.CodeSpO2Pulse, 72, "/min")), 0, "SpO2 97 % | pulse 72 /min"},
		{"spo2 low", rec("spo2", ob(telemetry.CodeSpO2, 88, "%"), ob(telemetry.CodeSpO2Pulse, 131, "/min")), 0, "!SpO2 88 % | !pulse 131 /min"},
		{"bp", rec("bp", ob(telemetry.CodeSys, 128, "mm[Hg]"), ob(telemetry.CodeDia, 82, "mm[Hg]"), ob(telemetry.CodeMean, 97.3, "mm[Hg]")), 0, "BP 128/82 mmHg"},
		{"bp high with pulse", rec("bp", ob(telemetry.CodeSys, 152, "mm[Hg]"), ob(telemetry.CodeDia, 95, "mm[Hg]"), ob(telemetry.CodeMean, 114, "mm[Hg]"), ob(telemetry.CodeBPPulse, 70, "/min")), 0, "!BP 152/95 mmHg | pulse 70 /min"},
		{"bp low", rec("bp", ob(telemetry.CodeSys, 85, "mm[Hg]"), ob(telemetry.CodeDia, 55, "mm[Hg]"), ob(telemetry.CodeMean, 65, "mm[Hg]")), 0, "!BP 85/55 mmHg"},
		{"glucose", rec("glucose", ob(telemetry.CodeGlucose, 105, "mg/dL")), 0, "glucose 105 mg/dL"},
		{"glucose high", rec("glucose", ob(telemetry.CodeGlucose, 240, "mg/dL")), 0, "!glucose 240 mg/dL"},
		{"temp", rec("temp", ob(telemetry.CodeTemp, 36.8, "Cel")), 0, "temp 36.8 °C"},
		{"fever", rec("temp", ob(telemetry.CodeTemp, 38.25, "Cel")), 0, "!temp 38.2 °C"},
		{"weight", rec("weight", ob(telemetry.CodeWeight, 72, "kg")), 0, "weight 72.0 kg"},
		{"ecg with hr", rec("ecg", telemetry.Observation{Code: telemetry.CodeECG, Val: telemetry.Waveform(make([]float64, 250)), Unit: "mV", PeriodMS: &period}), 71.6, "ECG HR 72 /min | 250 samples @4ms"},
		{"ecg fast", rec("ecg", telemetry.Observation{Code: telemetry.CodeECG, Val: telemetry.Waveform(make([]float64, 250)), Unit: "mV", PeriodMS: &period}), 150, "!ECG HR 150 /min | 250 samples @4ms"},
		{"ecg without hr", rec("ecg", telemetry.Observation{Code: telemetry.CodeECG, Val: telemetry.Waveform(make([]float64, 10)), Unit: "mV", PeriodMS: &period}), 0, "ECG 10 samples @4ms"},
		{"unknown kind", rec("mood", ob("X_MOOD", 3.25, "{score}")), 0, "X_MOOD 3.2 {score}"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var parts []string
			for _, f := range Vitals(c.rec, c.hr) {
				if f.Abnormal {
					parts = append(parts, "!"+f.Text)
				} else {
					parts = append(parts, f.Text)
				}
			}
			if got := strings.Join(parts, " | "); got != c.want {
				t.Errorf("got  %q\nwant %q", got, c.want)
			}
		})
	}
}

// synthECG is a lead with a narrow R peak every 60/bpm seconds at 250 Hz and
// a smaller T wave, the shape the peak detector must not count twice.
func synthECG(bpm float64, seconds float64) []float64 {
	n := int(seconds * 250)
	out := make([]float64, n)
	rr := 60 / bpm
	for i := range out {
		t := float64(i) / 250
		ph := math.Mod(t+0.1, rr)
		out[i] = 1.1*math.Exp(-math.Pow(ph-0.1, 2)/(2*0.011*0.011)) + 0.3*math.Exp(-math.Pow(ph-0.38, 2)/(2*0.05*0.05))
	}
	return out
}

func TestHeartRate(t *testing.T) {
	for _, bpm := range []float64{45, 60, 72, 100, 150} {
		got := HeartRate(synthECG(bpm, 8), 4)
		if math.Abs(got-bpm) > 2 {
			t.Errorf("%v bpm: HeartRate = %.1f", bpm, got)
		}
	}
	if got := HeartRate(make([]float64, 500), 4); got != 0 {
		t.Errorf("flat line: %v, want 0", got)
	}
	if got := HeartRate(synthECG(60, 1.5), 4); got != 0 { // under three beats
		t.Errorf("1.5 s at 60 bpm: %v, want 0", got)
	}
	if got := HeartRate(synthECG(60, 5), 0); got != 0 {
		t.Errorf("period 0: %v, want 0", got)
	}
}

func seen(dev string, seq uint64, kind, status string, obs ...telemetry.Observation) *cloud.Seen {
	r := rec(kind, obs...)
	r.Dev, r.Seq = dev, seq
	return &cloud.Seen{Msg: &wire.Message{V: 1, ID: dev + ":" + string(rune('0'+seq)), Rec: *r}, Status: status}
}

func TestViewAndRender(t *testing.T) {
	v := New()
	v.Telemetry(seen("oxi-2", 1, "spo2", cloud.SigOK, ob(telemetry.CodeSpO2, 97, "%"), ob(telemetry.CodeSpO2Pulse, 72, "/min")))
	v.Telemetry(seen("oxi-1", 1, "spo2", cloud.SigOK, ob(telemetry.CodeSpO2, 97, "%"), ob(telemetry.CodeSpO2Pulse, 72, "/min")))
	v.Telemetry(seen("oxi-1", 2, "spo2", cloud.SigOK, ob(telemetry.CodeSpO2, 89, "%"), ob(telemetry.CodeSpO2Pulse, 80, "/min")))
	v.Telemetry(seen("oxi-1", 1, "spo2", cloud.SigOK, ob(telemetry.CodeSpO2, 99, "%"), ob(telemetry.CodeSpO2Pulse, 60, "/min"))) // late: older seq
	v.Telemetry(&cloud.Seen{Dup: true, Msg: &wire.Message{}})
	v.Telemetry(seen("forged", 1, "temp", cloud.SigBad, ob(telemetry.CodeTemp, 36.6, "Cel")))
	v.Telemetry(nil)
	for _, ev := range []string{
		`{"v":1,"ts":1767225600000,"gw":"gw1","dev":"x","verdict":"bad_signature","detail":"signature does not verify","remote":"127.0.0.1:1"}`,
		`{"v":1,"ts":1767225600000,"gw":"gw1","dev":"x","verdict":"bad_signature","detail":"signature does not verify","remote":"127.0.0.1:1"}`,
		`{"v":1,"ts":1767225600000,"gw":"gw1","verdict":"replay","detail":"seq 1 not above last accepted 5","remote":"127.0.0.1:1"}`,
	} {
		if err := v.SecurityEvent([]byte(ev)); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.SecurityEvent([]byte(`{"v":1}`)); err == nil {
		t.Error("event without verdict accepted")
	}
	if err := v.SecurityEvent([]byte(`not json`)); err == nil {
		t.Error("non-JSON event accepted")
	}

	s := v.Snapshot()
	if len(s.Rows) != 3 || s.Rows[0].Dev != "forged" || s.Rows[1].Dev != "oxi-1" || s.Rows[2].Dev != "oxi-2" {
		t.Fatalf("rows %+v", s.Rows)
	}
	if r := s.Rows[1]; r.Seq != 2 || r.Records != 3 || !r.Fields[0].Abnormal {
		t.Errorf("oxi-1: %+v: want the latest (seq 2, SpO2 89 abnormal) after 3 records", r)
	}
	if s.Received != 7 || s.Duplicates != 1 || s.SigProblem != 1 || s.Undecoded != 1 {
		t.Errorf("counts %+v", s)
	}
	if s.Rejections["bad_signature"] != 2 || s.Rejections["replay"] != 1 || s.Rejected() != 3 {
		t.Errorf("rejections %v", s.Rejections)
	}

	var plain strings.Builder
	now := time.UnixMilli(1767225600000).Add(1500 * time.Millisecond)
	if err := Render(&plain, s, Options{Header: []string{"header line"}, Now: now}); err != nil {
		t.Fatal(err)
	}
	out := plain.String()
	for _, want := range []string{"header line", "DEVICE", "oxi-1", "!SpO2 89 % / pulse 80 /min", "1.5s", "SIG BAD",
		"rejected by the gateway (security events): bad_signature 2 replay 1", "seq 1 not above last accepted 5",
		"duplicates dropped 1"} {
		if !strings.Contains(out, want) {
			t.Errorf("plain render lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\x1b[") {
		t.Errorf("plain render has ANSI codes:\n%q", out)
	}
	// Columns line up: every table line puts VITALS at the same rune offset.
	lines := strings.Split(out, "\n")
	var col int
	for _, l := range lines {
		if strings.HasPrefix(l, "DEVICE") {
			col = strings.Index(l, "VITALS")
		}
	}
	for _, l := range lines {
		if strings.HasPrefix(l, "oxi-") && !strings.Contains(l[col:], "SpO2") {
			t.Errorf("misaligned row %q (VITALS at %d)", l, col)
		}
	}

	var color strings.Builder
	Render(&color, s, Options{Color: true, Now: now})
	if !strings.Contains(color.String(), boldRed+"SpO2 89 %"+reset) {
		t.Errorf("colour render does not highlight SpO2 89:\n%q", color.String())
	}
	if strings.Contains(color.String(), boldRed+"pulse 80") {
		t.Error("normal pulse highlighted")
	}
}

func TestViewECGHeartRate(t *testing.T) {
	v := New()
	period := uint64(4)
	wave := synthECG(75, 6)
	for i := 0; i < 6; i++ {
		chunk := wave[i*250 : (i+1)*250]
		v.Telemetry(seen("ecg-1", uint64(i+1), "ecg", cloud.SigOK,
			telemetry.Observation{Code: telemetry.CodeECG, Val: telemetry.Waveform(chunk), Unit: "mV", PeriodMS: &period}))
	}
	f := v.Snapshot().Rows[0].Fields
	if len(f) != 2 || !strings.HasPrefix(f[0].Text, "ECG HR 7") || f[0].Abnormal {
		t.Fatalf("fields %+v, want ECG HR about 75", f)
	}
}

func TestRowsBounded(t *testing.T) {
	v := New()
	for i := range maxRows + 10 {
		v.Telemetry(seen("d"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+string(rune('a'+i/26%26))+string(rune('a'+i/676)),
			1, "temp", cloud.SigOK, ob(telemetry.CodeTemp, 36.6, "Cel")))
	}
	if n := len(v.Snapshot().Rows); n > maxRows {
		t.Fatalf("%d rows, bound %d", n, maxRows)
	}
}

// TestChainsCounted: the view counts verified and rejected certificate
// chains and shows the last rejection.
func TestChainsCounted(t *testing.T) {
	v := New()
	v.Chain(&cloud.Chain{Dev: "oxi-1", Leaf: &x509.Certificate{SerialNumber: big.NewInt(1)}})
	v.Chain(&cloud.Chain{Dev: "oxi-2", Err: errors.New("does not chain to ca.crt")})
	var b strings.Builder
	if err := Render(&b, v.Snapshot(), Options{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"device certificates (published, checked against ca.crt): 1 verified, 1 rejected",
		"last rejected: certificate of oxi-2 REJECTED: does not chain to ca.crt"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("view lacks %q:\n%s", want, b.String())
		}
	}
}
