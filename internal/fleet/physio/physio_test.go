package physio

import (
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"math"
	"reflect"
	"testing"
	"time"
)

var t0 = time.Date(2025, 3, 10, 0, 0, 0, 0, time.UTC)

// rng is a possible range of docs/protocol.md#the-record.
type rng struct{ lo, hi float64 }

var designRanges = map[string]rng{
	telemetry.CodeSpO2: {0, 100}, telemetry.CodeSpO2Pulse: {20, 350},
	telemetry.CodeSys: {20, 300}, telemetry.CodeDia: {10, 250}, telemetry.CodeMean: {15, 260}, telemetry.CodeBPPulse: {20, 350},
	telemetry.CodeGlucose: {10, 1000}, telemetry.CodeTemp: {25, 45}, telemetry.CodeWeight: {0.5, 500}, telemetry.CodeECG: {-10, 10},
}

var units = map[string]string{
	telemetry.CodeSpO2: UnitPercent, telemetry.CodeSpO2Pulse: UnitPerMin, telemetry.CodeSys: UnitMmHg, telemetry.CodeDia: UnitMmHg,
	telemetry.CodeMean: UnitMmHg, telemetry.CodeBPPulse: UnitPerMin, telemetry.CodeGlucose: UnitMgDL, telemetry.CodeTemp: UnitCel,
	telemetry.CodeWeight: UnitKg, telemetry.CodeECG: UnitMV,
}

type series struct {
	vals  map[string][]float64
	hours map[string][]float64 // local hour of each value
}

// simulate samples m every step over span and checks every observation
// against the ranges and units of docs/protocol.md#the-record.
func simulate(t *testing.T, m Model, span, step time.Duration) series {
	t.Helper()
	s := series{vals: map[string][]float64{}, hours: map[string][]float64{}}
	for ts := t0; ts.Before(t0.Add(span)); ts = ts.Add(step) {
		obs := m.Sample(ts)
		if len(obs) == 0 || len(obs) > 64 {
			t.Fatalf("%s: %d observations", m.Kind(), len(obs))
		}
		for _, o := range obs {
			r, ok := designRanges[o.Code]
			if !ok {
				t.Fatalf("%s: unknown code %s", m.Kind(), o.Code)
			}
			if units[o.Code] != o.Unit {
				t.Fatalf("%s: unit %q for %s", m.Kind(), o.Unit, o.Code)
			}
			vals := []float64{o.Val}
			if o.Samples != nil {
				vals = o.Samples
				if o.PeriodMS == 0 {
					t.Fatalf("%s: samples without period", m.Kind())
				}
			}
			for _, v := range vals {
				if math.IsNaN(v) || v < r.lo || v > r.hi {
					t.Fatalf("%s at %v: %s = %v outside %v", m.Kind(), ts, o.Code, v, r)
				}
				s.vals[o.Code] = append(s.vals[o.Code], v)
				s.hours[o.Code] = append(s.hours[o.Code], hourOf(ts, time.UTC))
			}
		}
		if m.Kind() == BP {
			sys, dia, mean := obs[0].Val, obs[1].Val, obs[2].Val
			if sys <= dia {
				t.Fatalf("bp at %v: sys %v <= dia %v", ts, sys, dia)
			}
			if math.Abs(mean-(dia+(sys-dia)/3)) > 0.051 {
				t.Fatalf("bp at %v: MAP %v for %v/%v", ts, mean, sys, dia)
			}
		}
	}
	return s
}

func stats(v []float64) (mean, lo, hi float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, x := range v {
		mean += x
		lo, hi = math.Min(lo, x), math.Max(hi, x)
	}
	return mean / float64(len(v)), lo, hi
}

// meanBetween is the mean of the values whose hour is in [from, to).
func meanBetween(s series, code string, from, to float64) float64 {
	var sum float64
	var n int
	for i, h := range s.hours[code] {
		if h >= from && h < to {
			sum += s.vals[code][i]
			n++
		}
	}
	return sum / float64(n)
}

func newModel(t *testing.T, kind string, seed uint64) Model {
	t.Helper()
	m, err := New(kind, seed, time.UTC)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestRangesAndMeans(t *testing.T) {
	const span = 4 * 24 * time.Hour
	for seed := uint64(1); seed <= 5; seed++ {
		t.Run("spo2", func(t *testing.T) {
			s := simulate(t, newModel(t, SpO2, seed), span, 10*time.Second)
			mean, lo, hi := stats(s.vals[telemetry.CodeSpO2])
			if mean < 95.5 || mean > 98.8 || hi > 99 || lo < 85 {
				t.Errorf("spo2 mean %.2f range %v..%v", mean, lo, hi)
			}
			var dips int
			for _, v := range s.vals[telemetry.CodeSpO2] {
				if v <= 90 {
					dips++
				}
			}
			frac := float64(dips) / float64(len(s.vals[telemetry.CodeSpO2]))
			if dips == 0 || frac > 0.02 {
				t.Errorf("desaturation samples %d (%.3f%%): want rare but present", dips, 100*frac)
			}
			hr, lo, hi := stats(s.vals[telemetry.CodeSpO2Pulse])
			if hr < 55 || hr > 85 || lo < 40 || hi > 140 {
				t.Errorf("pulse mean %.1f range %v..%v", hr, lo, hi)
			}
			night, day := meanBetween(s, telemetry.CodeSpO2Pulse, 1, 5), meanBetween(s, telemetry.CodeSpO2Pulse, 13, 17)
			if night >= day-4 {
				t.Errorf("heart rate night %.1f, afternoon %.1f: want lower at night", night, day)
			}
		})
		t.Run("bp", func(t *testing.T) {
			s := simulate(t, newModel(t, BP, seed), span, time.Minute)
			sys, _, _ := stats(s.vals[telemetry.CodeSys])
			dia, _, _ := stats(s.vals[telemetry.CodeDia])
			if sys < 105 || sys > 145 || dia < 62 || dia > 92 {
				t.Errorf("bp mean %.1f/%.1f", sys, dia)
			}
			morning, night := meanBetween(s, telemetry.CodeSys, 6.5, 9), meanBetween(s, telemetry.CodeSys, 1, 4)
			if morning < night+8 {
				t.Errorf("systolic morning %.1f night %.1f: want a morning surge", morning, night)
			}
		})
		t.Run("glucose", func(t *testing.T) {
			s := simulate(t, newModel(t, Glucose, seed), span, time.Minute)
			mean, lo, hi := stats(s.vals[telemetry.CodeGlucose])
			if mean < 95 || mean > 140 || lo < 60 || hi > 250 {
				t.Errorf("glucose mean %.1f range %v..%v", mean, lo, hi)
			}
			fasting, afterLunch := meanBetween(s, telemetry.CodeGlucose, 3, 5), meanBetween(s, telemetry.CodeGlucose, 13.5, 14.5)
			if afterLunch < fasting+15 {
				t.Errorf("glucose fasting %.1f after lunch %.1f: want a post-meal excursion", fasting, afterLunch)
			}
		})
		t.Run("temp", func(t *testing.T) {
			s := simulate(t, newModel(t, Temp, seed), span, time.Minute)
			mean, lo, hi := stats(s.vals[telemetry.CodeTemp])
			if mean < 36.6 || mean > 37.0 || lo < 36.0 || hi > 37.6 {
				t.Errorf("temp mean %.2f range %v..%v", mean, lo, hi)
			}
			early, evening := meanBetween(s, telemetry.CodeTemp, 4, 6), meanBetween(s, telemetry.CodeTemp, 16, 18)
			if early > 36.65 || evening < 36.95 {
				t.Errorf("temp early %.2f evening %.2f: want about 36.4-37.2", early, evening)
			}
		})
		t.Run("weight", func(t *testing.T) {
			s := simulate(t, newModel(t, Weight, seed), 30*24*time.Hour, 15*time.Minute)
			mean, lo, hi := stats(s.vals[telemetry.CodeWeight])
			if mean < 45 || mean > 115 || hi-lo > 16 || hi-lo < 0.8 {
				t.Errorf("weight mean %.1f range %v..%v", mean, lo, hi)
			}
		})
		t.Run("ecg", func(t *testing.T) {
			s := simulate(t, newModel(t, ECG, seed), 24*time.Hour, 5*time.Minute)
			_, lo, hi := stats(s.vals[telemetry.CodeECG])
			if lo > -0.05 || lo < -1 || hi < 0.6 || hi > 2 {
				t.Errorf("ecg range %v..%v mV", lo, hi)
			}
		})
	}
}

func TestECGChunkShape(t *testing.T) {
	for seed := uint64(1); seed <= 5; seed++ {
		m := newModel(t, ECG, seed)
		var all []float64
		var hrs []float64
		for i := 0; i < 20; i++ { // 20 consecutive seconds
			obs := m.Sample(t0.Add(time.Duration(i) * time.Second))
			if len(obs) != 1 || obs[0].Code != telemetry.CodeECG || obs[0].Unit != UnitMV || obs[0].PeriodMS != 4 {
				t.Fatalf("chunk %+v", obs)
			}
			if len(obs[0].Samples) != 250 {
				t.Fatalf("chunk of %d samples", len(obs[0].Samples))
			}
			all = append(all, obs[0].Samples...)
			hr, _ := HeartRate(m)
			hrs = append(hrs, hr)
		}
		_, _, hi := stats(all)
		// R peaks: local maxima above 60 % of the tallest sample.
		var peaks []int
		for i := 1; i < len(all)-1; i++ {
			if all[i] > 0.6*hi && all[i] >= all[i-1] && all[i] > all[i+1] {
				if len(peaks) > 0 && i-peaks[len(peaks)-1] < 50 {
					continue // same complex
				}
				peaks = append(peaks, i)
			}
		}
		hr, _, _ := stats(hrs)
		want := 250 * 60 / hr // samples between beats
		if len(peaks) < 10 {
			t.Fatalf("seed %d: %d R peaks in 20 s at %.0f bpm", seed, len(peaks), hr)
		}
		for i := 1; i < len(peaks); i++ {
			d := float64(peaks[i] - peaks[i-1])
			if math.Abs(d-want) > 0.2*want {
				t.Errorf("seed %d: R-R %v samples, want about %.0f (%.0f bpm)", seed, d, want, hr)
			}
		}
		gotHR := 60 * 250 * float64(len(peaks)-1) / float64(peaks[len(peaks)-1]-peaks[0])
		if math.Abs(gotHR-hr) > 5 {
			t.Errorf("seed %d: ECG rate %.1f bpm, heart rate %.1f", seed, gotHR, hr)
		}
	}
}

func TestDeterministic(t *testing.T) {
	for _, kind := range Kinds() {
		a, b, c := newModel(t, kind, 42), newModel(t, kind, 42), newModel(t, kind, 43)
		same, diff := true, false
		for i := 0; i < 500; i++ {
			ts := t0.Add(time.Duration(i) * 37 * time.Second)
			x, y, z := a.Sample(ts), b.Sample(ts), c.Sample(ts)
			same = same && reflect.DeepEqual(x, y)
			diff = diff || !reflect.DeepEqual(x, z)
		}
		if !same {
			t.Errorf("%s: same seed, different values", kind)
		}
		if !diff {
			t.Errorf("%s: different seeds, same values", kind)
		}
	}
}

func TestUnknownKind(t *testing.T) {
	if _, err := New("pressure", 1, nil); err == nil {
		t.Fatal("want an error for an unknown kind")
	}
}
