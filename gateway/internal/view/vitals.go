// Package view is the clinician view of `gateway demo`: it keeps the latest
// vitals of every device as a clinician's app receives them from the cloud
// (decoded, de-duplicated and signature-checked by [cloud.Watcher]), counts
// the gateway's rejections from its security events, and renders both as a
// terminal table.
//
// # Readable vitals
//
// [Vitals] turns a record into short readable fields (SpO2 97 % / pulse 72,
// BP 128/82 mmHg, glucose 105 mg/dL, temp 36.8 °C, weight 72.4 kg, ECG heart
// rate) and flags each field that is clinically abnormal by the thresholds of
// [Abnormal]. These are display thresholds for a demo, not the gateway's
// schema ranges: the gateway never rejects an abnormal but possible value.
package view

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/vitalgate/vitalgate/internal/telemetry"
)

// The view knows observations by their telemetry codes (telemetry.CodeSpO2 and
// so on), and one of its own:
const (
	// CodeHeartRate is the view's name for a heart rate derived from an ECG
	// waveform; no device sends it.
	CodeHeartRate = "ecg_heart_rate"
)

// Field is one readable value of a row.
type Field struct {
	Text     string // e.g. "SpO2 97 %"
	Abnormal bool   // clinically abnormal: shown highlighted
}

// Abnormal reports whether val of the observation code is outside the
// clinical thresholds the view highlights:
//
//	SpO2 < 92 %; pulse or heart rate > 120 or < 50 /min;
//	systolic >= 140 or < 90 mmHg; diastolic >= 90 mmHg;
//	glucose > 180 or < 70 mg/dL; temperature >= 38 or < 35 °C.
//
// Weight and mean arterial pressure are never flagged.
func Abnormal(code string, val float64) bool {
	switch code {
	case telemetry.CodeSpO2:
		return val < 92
	case telemetry.CodeSpO2Pulse, telemetry.CodeBPPulse, CodeHeartRate:
		return val > 120 || val < 50
	case telemetry.CodeSys:
		return val >= 140 || val < 90
	case telemetry.CodeDia:
		return val >= 90
	case telemetry.CodeGlucose:
		return val > 180 || val < 70
	case telemetry.CodeTemp:
		return val >= 38 || val < 35
	}
	return false
}

// num formats a value with at most one decimal, without trailing zeros.
func num(v float64) string {
	if math.Abs(v-math.Round(v)) < 1e-9 {
		return strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

// unitText renders a UCUM unit for people.
func unitText(u string) string {
	switch u {
	case "Cel":
		return "°C"
	case "mm[Hg]":
		return "mmHg"
	}
	return u
}

// Vitals renders the observations of rec as readable fields. hr is the heart
// rate derived from the device's ECG waveform (0: unknown); it is used only
// for ecg records.
func Vitals(rec *telemetry.Record, hr float64) []Field {
	obs := map[string]telemetry.Observation{}
	for _, o := range rec.Obs {
		if _, dup := obs[o.Code]; !dup {
			obs[o.Code] = o
		}
	}
	val := func(code string) (float64, bool) {
		o, ok := obs[code]
		if !ok || o.Val.IsWaveform() {
			return 0, false
		}
		return o.Val.Num, true
	}
	var out []Field
	used := map[string]bool{}
	scalar := func(code, label, unit string) {
		if v, ok := val(code); ok {
			used[code] = true
			out = append(out, Field{Text: strings.TrimSpace(label + " " + num(v) + " " + unit), Abnormal: Abnormal(code, v)})
		}
	}
	scalar1 := func(code, label, unit string) { // always one decimal: 36.8 °C, 72.0 kg
		if v, ok := val(code); ok {
			used[code] = true
			out = append(out, Field{Text: label + " " + strconv.FormatFloat(v, 'f', 1, 64) + " " + unit, Abnormal: Abnormal(code, v)})
		}
	}
	switch rec.Kind {
	case "spo2":
		scalar(telemetry.CodeSpO2, "SpO2", "%")
		scalar(telemetry.CodeSpO2Pulse, "pulse", "/min")
	case "bp":
		sys, ok1 := val(telemetry.CodeSys)
		dia, ok2 := val(telemetry.CodeDia)
		if ok1 && ok2 {
			used[telemetry.CodeSys], used[telemetry.CodeDia] = true, true
			out = append(out, Field{Text: "BP " + num(sys) + "/" + num(dia) + " mmHg",
				Abnormal: Abnormal(telemetry.CodeSys, sys) || Abnormal(telemetry.CodeDia, dia)})
		}
		used[telemetry.CodeMean] = true // implied by sys/dia; keeps the row short
		scalar(telemetry.CodeBPPulse, "pulse", "/min")
	case "glucose":
		scalar(telemetry.CodeGlucose, "glucose", "mg/dL")
	case "temp":
		scalar1(telemetry.CodeTemp, "temp", "°C")
	case "weight":
		scalar1(telemetry.CodeWeight, "weight", "kg")
	case "ecg":
		if o, ok := obs[telemetry.CodeECG]; ok && o.Val.IsWaveform() {
			used[telemetry.CodeECG] = true
			if hr > 0 {
				out = append(out, Field{Text: "ECG HR " + num(math.Round(hr)) + " /min", Abnormal: Abnormal(CodeHeartRate, hr)})
			}
			f := Field{Text: fmt.Sprintf("%d samples", len(o.Val.Samples))}
			if o.PeriodMS != nil {
				f.Text += fmt.Sprintf(" @%dms", *o.PeriodMS)
			}
			if hr <= 0 {
				f.Text = "ECG " + f.Text
			}
			out = append(out, f)
		}
	}
	// Anything else (a kind a deployment added, an optional code): as sent.
	for _, o := range rec.Obs {
		if used[o.Code] {
			continue
		}
		used[o.Code] = true
		if o.Val.IsWaveform() {
			out = append(out, Field{Text: fmt.Sprintf("%s %d samples", o.Code, len(o.Val.Samples))})
			continue
		}
		out = append(out, Field{Text: o.Code + " " + num(o.Val.Num) + " " + unitText(o.Unit), Abnormal: Abnormal(o.Code, o.Val.Num)})
	}
	return out
}

// HeartRate estimates the heart rate (beats per minute) of an ECG lead from
// its R peaks: samples above 60 % of the signal's range that are local
// maxima, at least 250 ms apart (no heart beats faster than 240 /min). It
// needs at least three peaks (two RR intervals) and returns 0 otherwise.
func HeartRate(samples []float64, periodMS uint64) float64 {
	if len(samples) < 3 || periodMS == 0 {
		return 0
	}
	lo, hi := samples[0], samples[0]
	for _, s := range samples {
		lo, hi = min(lo, s), max(hi, s)
	}
	if hi-lo < 0.2 { // under 0.2 mV of swing: no QRS to find
		return 0
	}
	thr := lo + 0.6*(hi-lo)
	refractory := int(250 / periodMS)
	var peaks []int
	for i := 1; i < len(samples)-1; i++ {
		s := samples[i]
		if s < thr || s < samples[i-1] || s < samples[i+1] {
			continue
		}
		if n := len(peaks); n > 0 && i-peaks[n-1] < refractory {
			if s > samples[peaks[n-1]] {
				peaks[n-1] = i // a higher point of the same beat
			}
			continue
		}
		peaks = append(peaks, i)
	}
	if len(peaks) < 3 {
		return 0
	}
	rr := float64(peaks[len(peaks)-1]-peaks[0]) / float64(len(peaks)-1) * float64(periodMS) // ms
	return 60000 / rr
}
