package physio

import (
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"math"
	"math/rand/v2"
	"time"
)

// --- spo2 ---

type spo2 struct {
	rng   *rand.Rand
	heart heart
	base  float64 // resting saturation, %
	ar    ou
	// the current or next desaturation
	desatStart time.Time
	desatLen   time.Duration
	desatNadir float64
	meanGap    time.Duration // mean time between desaturations
}

func newSpO2(r *rand.Rand, loc *time.Location) *spo2 {
	return &spo2{
		rng:     r,
		heart:   newHeart(r, loc),
		base:    uniform(r, 96.5, 98.3),
		ar:      newOU(r, 2*time.Minute, 0.6),
		meanGap: time.Duration(uniform(r, 2, 4) * float64(time.Hour)),
	}
}

func (m *spo2) Kind() string { return SpO2 }

// scheduleDesat draws the next desaturation after t: exponential gaps (a
// Poisson process), nadir 85-90 %, 45-90 s long.
func (m *spo2) scheduleDesat(after time.Time) {
	gap := time.Duration(m.rng.ExpFloat64() * float64(m.meanGap))
	m.desatStart = after.Add(gap)
	m.desatLen = time.Duration(uniform(m.rng, 45, 90) * float64(time.Second))
	m.desatNadir = uniform(m.rng, 85, 90)
}

// depth is how deep in the desaturation t is: 0 outside, 1 at the nadir.
// The shape is a cosine fall over the first 30 %, a hold, and a cosine
// recovery over the last 30 %.
func (m *spo2) depth(t time.Time) float64 {
	if m.desatStart.IsZero() {
		m.scheduleDesat(t)
	}
	for !t.Before(m.desatStart.Add(m.desatLen)) { // past the event: draw the next one
		m.scheduleDesat(m.desatStart.Add(m.desatLen))
	}
	if t.Before(m.desatStart) {
		return 0
	}
	f := float64(t.Sub(m.desatStart)) / float64(m.desatLen)
	switch {
	case f < 0.3:
		return 0.5 - 0.5*math.Cos(math.Pi*f/0.3)
	case f > 0.7:
		return 0.5 + 0.5*math.Cos(math.Pi*(f-0.7)/0.3)
	}
	return 1
}

func (m *spo2) Sample(t time.Time) []Obs {
	d := m.depth(t)
	normal := clamp(m.base+m.ar.step(t, m.rng), 95, 99)
	sat := normal - d*(normal-m.desatNadir)
	if d == 0 {
		sat = clamp(math.Round(sat), 95, 99)
	} else {
		sat = clamp(math.Round(sat), 85, 99)
	}
	pulse := math.Round(m.heart.rate(t, m.rng, 8*d))
	return []Obs{
		{Code: telemetry.CodeSpO2, Unit: UnitPercent, Val: sat},
		{Code: telemetry.CodeSpO2Pulse, Unit: UnitPerMin, Val: pulse},
	}
}

// --- bp ---

type bp struct {
	rng            *rand.Rand
	loc            *time.Location
	heart          heart
	sysBase        float64
	diaBase        float64
	surge          float64 // morning surge of systolic pressure, mmHg
	surgeHour      float64
	sysAR, diaAR   ou
	sysDay, diaDay float64 // daily amplitudes
}

func newBP(r *rand.Rand, loc *time.Location) *bp {
	return &bp{
		rng:       r,
		loc:       loc,
		heart:     newHeart(r, loc),
		sysBase:   uniform(r, 112, 132),
		diaBase:   uniform(r, 70, 82),
		surge:     uniform(r, 10, 20),
		surgeHour: uniform(r, 7, 8.5),
		sysAR:     newOU(r, 30*time.Minute, 4),
		diaAR:     newOU(r, 30*time.Minute, 2.5),
		sysDay:    uniform(r, 5, 9),
		diaDay:    uniform(r, 3, 6),
	}
}

func (m *bp) Kind() string { return BP }

func (m *bp) Sample(t time.Time) []Obs {
	h := hourOf(t, m.loc)
	c := circ(h, 14)               // nocturnal dip, afternoon high
	s := bump(h, m.surgeHour, 1.3) // morning surge
	sys := m.sysBase + m.sysDay*c + m.surge*s + m.sysAR.step(t, m.rng) + 3*m.rng.NormFloat64()
	dia := m.diaBase + m.diaDay*c + 0.6*m.surge*s + m.diaAR.step(t, m.rng) + 2*m.rng.NormFloat64()
	sys = clamp(math.Round(sys), 85, 200)
	dia = clamp(math.Round(dia), 45, 120)
	if sys-dia < 20 { // keep a physiological pulse pressure
		sys = dia + 20
	}
	mean := round(dia+(sys-dia)/3, 1)
	pulse := math.Round(m.heart.rate(t, m.rng, 0))
	return []Obs{
		{Code: telemetry.CodeSys, Unit: UnitMmHg, Val: sys},
		{Code: telemetry.CodeDia, Unit: UnitMmHg, Val: dia},
		{Code: telemetry.CodeMean, Unit: UnitMmHg, Val: mean},
		{Code: telemetry.CodeBPPulse, Unit: UnitPerMin, Val: pulse},
	}
}

// --- glucose ---

// meal is one excursion: amplitude A (mg/dL) peaking rise after start, back
// to baseline fall later.
type meal struct {
	start      time.Time
	amp        float64
	rise, fall time.Duration
}

func (e meal) at(t time.Time) float64 {
	d := t.Sub(e.start)
	switch {
	case d <= 0:
		return 0
	case d < e.rise:
		x := math.Sin(math.Pi / 2 * float64(d) / float64(e.rise))
		return e.amp * x * x
	case d < e.rise+e.fall:
		x := math.Cos(math.Pi / 2 * float64(d-e.rise) / float64(e.fall))
		return e.amp * x * x
	}
	return 0
}

type glucose struct {
	rng   *rand.Rand
	seed  uint64
	loc   *time.Location
	base  float64 // fasting level
	ar    ou
	scale float64 // how strongly this person responds to meals
	days  map[int64][]meal
}

func newGlucose(r *rand.Rand, seed uint64, loc *time.Location) *glucose {
	return &glucose{
		rng:   r,
		seed:  seed,
		loc:   loc,
		base:  uniform(r, 85, 102),
		ar:    newOU(r, 40*time.Minute, 4),
		scale: uniform(r, 0.8, 1.25),
		days:  make(map[int64][]meal),
	}
}

func (m *glucose) Kind() string { return Glucose }

// meals of the local day that contains t: drawn from the seed and the day
// alone, so the schedule does not depend on when the model is sampled.
func (m *glucose) meals(day time.Time) []meal {
	y, mo, d := day.In(m.loc).Date()
	midnight := time.Date(y, mo, d, 0, 0, 0, 0, m.loc)
	key := midnight.Unix()
	if ms, ok := m.days[key]; ok {
		return ms
	}
	r := rand.New(rand.NewPCG(m.seed, uint64(key)))
	var ms []meal
	for _, c := range []struct{ hour, amp float64 }{{7.5, 45}, {12.75, 55}, {19, 60}} {
		h := c.hour + uniform(r, -0.75, 0.75)
		ms = append(ms, meal{
			start: midnight.Add(time.Duration(h * float64(time.Hour))),
			amp:   c.amp * m.scale * uniform(r, 0.7, 1.3),
			rise:  time.Duration(uniform(r, 30, 60) * float64(time.Minute)),
			fall:  time.Duration(uniform(r, 120, 180) * float64(time.Minute)),
		})
	}
	if len(m.days) > 8 { // keep the cache bounded
		clear(m.days)
	}
	m.days[key] = ms
	return ms
}

func (m *glucose) Sample(t time.Time) []Obs {
	v := m.base + m.ar.step(t, m.rng) + 2*m.rng.NormFloat64()
	v += 6 * bump(hourOf(t, m.loc), 6, 1) // dawn phenomenon
	for _, day := range []time.Time{t.AddDate(0, 0, -1), t} {
		for _, e := range m.meals(day) {
			v += e.at(t)
		}
	}
	return []Obs{{Code: telemetry.CodeGlucose, Unit: UnitMgDL, Val: clamp(math.Round(v), 60, 300)}}
}

// --- temp ---

type temp struct {
	rng  *rand.Rand
	loc  *time.Location
	base float64
	amp  float64
	ar   ou
}

func newTemp(r *rand.Rand, loc *time.Location) *temp {
	return &temp{
		rng:  r,
		loc:  loc,
		base: uniform(r, 36.7, 36.9),
		amp:  uniform(r, 0.3, 0.4),
		ar:   newOU(r, 20*time.Minute, 0.07),
	}
}

func (m *temp) Kind() string { return Temp }

func (m *temp) Sample(t time.Time) []Obs {
	v := m.base + m.amp*circ(hourOf(t, m.loc), 17) + m.ar.step(t, m.rng) + 0.03*m.rng.NormFloat64()
	return []Obs{{Code: telemetry.CodeTemp, Unit: UnitCel, Val: clamp(round(v, 2), 36.0, 37.6)}}
}

// --- weight ---

type weight struct {
	rng   *rand.Rand
	loc   *time.Location
	base  float64
	trend ou // slow drift over days, kg
	day   float64
}

func newWeight(r *rand.Rand, loc *time.Location) *weight {
	return &weight{
		rng:   r,
		loc:   loc,
		base:  uniform(r, 55, 105),
		trend: newOU(r, 20*24*time.Hour, 1.5),
		day:   uniform(r, 0.4, 0.8),
	}
}

func (m *weight) Kind() string { return Weight }

func (m *weight) Sample(t time.Time) []Obs {
	v := m.base + clamp(m.trend.step(t, m.rng), -6, 6) + m.day*circ(hourOf(t, m.loc), 20) + 0.15*m.rng.NormFloat64()
	return []Obs{{Code: telemetry.CodeWeight, Unit: UnitKg, Val: round(v, 1)}}
}

// --- ecg ---

// wave is one Gaussian of the PQRST complex, in the time domain relative to
// the R peak; ECGSYN places them on the phase circle instead, which is what
// ecg.value does with the current RR interval.
type wave struct {
	off   float64 // seconds from the R peak (T: scaled by sqrt(RR), Bazett)
	sigma float64 // seconds
	amp   float64 // mV
	qt    bool    // scale off and sigma with sqrt(RR)
}

type ecg struct {
	rng    *rand.Rand
	heart  heart
	waves  []wave
	phase  float64 // radians in [-pi, pi), R peak at 0
	rr     float64 // current RR interval, s
	hr     float64 // heart rate of the current beat, bpm
	wander float64 // baseline wander amplitude, mV
	noise  float64 // sample noise, mV
}

func newECG(r *rand.Rand, loc *time.Location) *ecg {
	g := uniform(r, 0.8, 1.3) // lead II gain of this person
	m := &ecg{
		rng:   r,
		heart: newHeart(r, loc),
		waves: []wave{
			{off: -0.16, sigma: 0.025, amp: 0.12 * g},         // P
			{off: -0.028, sigma: 0.009, amp: -0.10 * g},       // Q
			{off: 0, sigma: 0.011, amp: 1.1 * g},              // R
			{off: 0.030, sigma: 0.010, amp: -0.22 * g},        // S
			{off: 0.28, sigma: 0.05, amp: 0.30 * g, qt: true}, // T
		},
		phase:  uniform(r, -math.Pi, math.Pi),
		wander: uniform(r, 0.02, 0.06),
		noise:  0.01,
	}
	return m
}

func (m *ecg) Kind() string { return ECG }

// value is the waveform at the current phase.
func (m *ecg) value() float64 {
	v := 0.0
	for _, w := range m.waves {
		off, sigma := w.off, w.sigma
		if w.qt {
			s := math.Sqrt(m.rr)
			off, sigma = off*s, sigma*s
		}
		th := 2 * math.Pi * off / m.rr
		b := 2 * math.Pi * sigma / m.rr
		d := math.Remainder(m.phase-th, 2*math.Pi)
		v += w.amp * math.Exp(-d*d/(2*b*b))
	}
	return v
}

// Sample returns one second of lead II starting at t: 250 samples 4 ms apart.
// The waveform continues from the previous chunk.
func (m *ecg) Sample(t time.Time) []Obs {
	if m.rr == 0 {
		m.hr = m.heart.rate(t, m.rng, 0)
		m.rr = 60 / m.hr
	}
	samples := make([]float64, ECGChunk)
	for i := range samples {
		ts := t.Add(time.Duration(i) * ECGPeriodMS * time.Millisecond)
		v := m.value() + m.wander*math.Sin(2*math.Pi*m.heart.respHz*seconds(ts)) + m.noise*m.rng.NormFloat64()
		samples[i] = clamp(round(v, 3), -5, 5)
		m.phase += 2 * math.Pi * ecgDT / m.rr
		if m.phase >= math.Pi { // next beat: its RR follows the heart rate now
			m.phase -= 2 * math.Pi
			m.hr = m.heart.rate(ts, m.rng, 0)
			m.rr = 60 / m.hr
		}
	}
	return []Obs{{Code: telemetry.CodeECG, Unit: UnitMV, Samples: samples, PeriodMS: ECGPeriodMS}}
}

// HeartRate is the heart rate (bpm) of the beat at the end of the last ECG
// chunk; ok is false for models other than ecg.
func HeartRate(m Model) (bpm float64, ok bool) {
	if e, ok := m.(*ecg); ok {
		return e.hr, true
	}
	return 0, false
}
