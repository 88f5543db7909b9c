// Package physio generates believable, seeded physiology for the simulated
// home-care devices of [github.com/vitalgate/vitalgate/internal/fleet].
//
// # Models
//
// [New] returns a [Model] for one of the six kinds of docs/protocol.md#3-the-message-cose_sign1-around-a-cbor-record.
// Each model is a small stateful process driven by the time it is sampled at:
//
//   - heart rate: a daily rhythm (lowest around 03:00), an Ornstein-Uhlenbeck
//     (continuous AR(1)) fluctuation and respiratory sinus arrhythmia;
//   - spo2: 95-99 % with rare desaturations to 85-90 % lasting about a minute,
//     and the pulse rate of the same heart;
//   - bp: systolic and diastolic pressure with a nocturnal dip and a morning
//     surge, the mean arterial pressure dia + (sys-dia)/3, and the pulse rate;
//   - glucose: a fasting level with an excursion after each meal (rise over
//     30-60 min, return over 2-3 h), meal times drawn per day;
//   - temp: body temperature with a daily cycle of about 36.4-37.2 °C;
//   - weight: a slow trend over days plus a daily cycle and scale noise;
//   - ecg: lead II as a sum of Gaussians per beat (after McSharry's ECGSYN)
//     at 250 Hz in one-second chunks of 250 samples, in mV, with the beat
//     rate following the heart rate.
//
// Every value stays inside the possible ranges of docs/protocol.md#the-record, and
// in fact inside narrower physiological bounds (see the clamps in each
// model). A model is deterministic: the same seed and the same sampling
// times give the same values. Models are not safe for concurrent use.
package physio

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// The kinds of docs/protocol.md#the-record.
const (
	SpO2    = "spo2"
	BP      = "bp"
	Glucose = "glucose"
	Temp    = "temp"
	Weight  = "weight"
	ECG     = "ecg"
)

// The models' observation codes are the IEEE 11073-10101 reference IDs of
// [telemetry] (telemetry.CodeSpO2 and so on).

// UCUM units used by the models.
const (
	UnitPercent = "%"
	UnitPerMin  = "/min"
	UnitMmHg    = "mm[Hg]"
	UnitMgDL    = "mg/dL"
	UnitCel     = "Cel"
	UnitKg      = "kg"
	UnitMV      = "mV"
)

// ECG sampling: 250 Hz, one-second chunks.
const (
	ECGRate     = 250                    // samples per second
	ECGPeriodMS = 1000 / ECGRate         // sample period in ms (4)
	ECGChunk    = ECGRate                // samples per chunk (one second)
	ecgDT       = 1.0 / float64(ECGRate) // seconds per sample
)

// Kinds lists the six kinds in a fixed order (the round-robin order of a fleet).
func Kinds() []string { return []string{SpO2, BP, Glucose, Temp, Weight, ECG} }

// Obs is one observation of a measurement: a value, or samples with their
// period for a waveform.
type Obs struct {
	Code     string
	Unit     string
	Val      float64
	Samples  []float64 // non-nil for a waveform
	PeriodMS uint64    // sample period, set with Samples
}

// Model is the physiology behind one device. Sample returns the observations
// of a measurement taken at t. Calls should come with non-decreasing t; an
// earlier t is treated as no time passing.
type Model interface {
	Kind() string
	Sample(t time.Time) []Obs
}

// New returns the model of kind, seeded with seed. Time of day (for daily
// rhythms and meals) is read in loc; nil means time.Local.
func New(kind string, seed uint64, loc *time.Location) (Model, error) {
	if loc == nil {
		loc = time.Local
	}
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15^hashString(kind)))
	switch kind {
	case SpO2:
		return newSpO2(rng, loc), nil
	case BP:
		return newBP(rng, loc), nil
	case Glucose:
		return newGlucose(rng, seed, loc), nil
	case Temp:
		return newTemp(rng, loc), nil
	case Weight:
		return newWeight(rng, loc), nil
	case ECG:
		return newECG(rng, loc), nil
	}
	return nil, fmt.Errorf("physio: unknown kind %q", kind)
}

func hashString(s string) uint64 { // FNV-1a
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// --- helpers ---

func uniform(r *rand.Rand, lo, hi float64) float64 { return lo + (hi-lo)*r.Float64() }

func clamp(x, lo, hi float64) float64 { return math.Max(lo, math.Min(hi, x)) }

// round rounds x to the given number of decimals (nearest float64 to the
// decimal value, so 0.009 and not 0.009000000000000001).
func round(x float64, decimals int) float64 {
	p := math.Pow10(decimals)
	return math.Round(x*p) / p
}

// hourOf is the local time of day of t in hours [0, 24).
func hourOf(t time.Time, loc *time.Location) float64 {
	l := t.In(loc)
	return float64(l.Hour()) + float64(l.Minute())/60 + (float64(l.Second())+float64(l.Nanosecond())/1e9)/3600
}

// circ is a daily cosine: +1 at peak hour, -1 twelve hours later.
func circ(hour, peak float64) float64 { return math.Cos(2 * math.Pi * (hour - peak) / 24) }

// bump is a Gaussian bump of height 1 centred on hour c (width w hours),
// wrapping around midnight.
func bump(hour, c, w float64) float64 {
	d := math.Mod(hour-c+36, 24) - 12
	return math.Exp(-d * d / (2 * w * w))
}

// seconds is t in seconds since the epoch, for phases of fast oscillations.
func seconds(t time.Time) float64 { return float64(t.UnixNano()%(1<<50)) / 1e9 }

// ou is an Ornstein-Uhlenbeck process (AR(1) sampled at arbitrary
// intervals): mean 0, stationary standard deviation sigma, time constant tau.
type ou struct {
	x, tau, sigma float64
	last          time.Time
}

func newOU(r *rand.Rand, tau time.Duration, sigma float64) ou {
	return ou{x: r.NormFloat64() * sigma, tau: tau.Seconds(), sigma: sigma}
}

func (o *ou) step(t time.Time, r *rand.Rand) float64 {
	if o.last.IsZero() {
		o.last = t
		return o.x
	}
	dt := t.Sub(o.last).Seconds()
	if dt <= 0 {
		return o.x
	}
	o.last = t
	a := math.Exp(-dt / o.tau)
	o.x = a*o.x + o.sigma*math.Sqrt(1-a*a)*r.NormFloat64()
	return o.x
}

// heart is the heart rate shared by the spo2, bp and ecg models.
type heart struct {
	loc    *time.Location
	base   float64 // daily mean, bpm
	amp    float64 // daily amplitude, bpm
	ar     ou      // slow variability, bpm
	respHz float64 // breathing frequency
	rsa    float64 // respiratory sinus arrhythmia amplitude, bpm
}

func newHeart(r *rand.Rand, loc *time.Location) heart {
	return heart{
		loc:    loc,
		base:   uniform(r, 62, 76),
		amp:    uniform(r, 5, 9),
		ar:     newOU(r, 90*time.Second, uniform(r, 2.5, 4)),
		respHz: uniform(r, 0.2, 0.3),
		rsa:    uniform(r, 1.5, 4),
	}
}

// rate is the instantaneous heart rate at t in beats per minute, plus extra
// (for example the response to a desaturation).
func (h *heart) rate(t time.Time, r *rand.Rand, extra float64) float64 {
	hr := h.base + h.amp*circ(hourOf(t, h.loc), 15) + h.ar.step(t, r) +
		h.rsa*math.Sin(2*math.Pi*h.respHz*seconds(t)) + extra
	return clamp(hr, 40, 180)
}
