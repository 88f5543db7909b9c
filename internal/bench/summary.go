package bench

import (
	"reflect"
	"slices"
)

// Spread is the lowest and highest value of the main figures over the runs
// of [Summarize] (equal to the figure after one run).
type Spread struct {
	ValidatedMin    float64 `json:"validated_msgs_per_s_min"`
	ValidatedMax    float64 `json:"validated_msgs_per_s_max"`
	VerifyOnlyMin   float64 `json:"verify_only_msgs_per_s_min"`
	VerifyOnlyMax   float64 `json:"verify_only_msgs_per_s_max"`
	RatioMin        float64 `json:"ratio_min"`
	RatioMax        float64 `json:"ratio_max"`
	RatioPerCoreMin float64 `json:"ratio_per_cpu_s_min"`
	RatioPerCoreMax float64 `json:"ratio_per_cpu_s_max"`
	P50Min          float64 `json:"latency_p50_ms_min"`
	P50Max          float64 `json:"latency_p50_ms_max"`
	P99Min          float64 `json:"latency_p99_ms_min"`
	P99Max          float64 `json:"latency_p99_ms_max"`
	RSSPerConnMin   float64 `json:"gateway_rss_per_conn_bytes_min"`
	RSSPerConnMax   float64 `json:"gateway_rss_per_conn_bytes_max"`
	FullMin         float64 `json:"handshakes_full_per_s_min"`
	FullMax         float64 `json:"handshakes_full_per_s_max"`
	ResumedMin      float64 `json:"handshakes_resumed_per_s_min"`
	ResumedMax      float64 `json:"handshakes_resumed_per_s_max"`
	StormAckP99Min  float64 `json:"storm_connected_ack_p99_ms_min"`
	StormAckP99Max  float64 `json:"storm_connected_ack_p99_ms_max"`
	BaselineMin     float64 `json:"baseline_mochi_msgs_per_s_min"`
	BaselineMax     float64 `json:"baseline_mochi_msgs_per_s_max"`
	VsBaselineMin   float64 `json:"validated_vs_baseline_min"`
	VsBaselineMax   float64 `json:"validated_vs_baseline_max"`
	// Absent, as their figures, without Mosquitto.
	MosquittoMin   float64 `json:"baseline_mosquitto_msgs_per_s_min,omitempty"`
	MosquittoMax   float64 `json:"baseline_mosquitto_msgs_per_s_max,omitempty"`
	VsMosquittoMin float64 `json:"validated_vs_mosquitto_min,omitempty"`
	VsMosquittoMax float64 `json:"validated_vs_mosquitto_max,omitempty"`
}

// spreadOf lists, for each pair of Spread fields, the figure it spans.
func spreadOf(r *Result) [][3]*float64 {
	s := &r.Spread
	return [][3]*float64{
		{&r.Validated, &s.ValidatedMin, &s.ValidatedMax},
		{&r.VerifyOnly, &s.VerifyOnlyMin, &s.VerifyOnlyMax},
		{&r.Ratio, &s.RatioMin, &s.RatioMax},
		{&r.RatioPerCore, &s.RatioPerCoreMin, &s.RatioPerCoreMax},
		{&r.P50, &s.P50Min, &s.P50Max},
		{&r.P99, &s.P99Min, &s.P99Max},
		{&r.RSSPerConn, &s.RSSPerConnMin, &s.RSSPerConnMax},
		{&r.FullPerS, &s.FullMin, &s.FullMax},
		{&r.ResumedPerS, &s.ResumedMin, &s.ResumedMax},
		{&r.StormLoadAckP99, &s.StormAckP99Min, &s.StormAckP99Max},
		{&r.Baseline, &s.BaselineMin, &s.BaselineMax},
		{&r.VsBaseline, &s.VsBaselineMin, &s.VsBaselineMax},
		{&r.Mosquitto, &s.MosquittoMin, &s.MosquittoMax},
		{&r.VsMosquitto, &s.VsMosquittoMin, &s.VsMosquittoMax},
	}
}

// Summarize makes one result of several runs: every number is the median
// over the runs (the mean of the middle two for an even count; each ratio
// is the median of the runs' ratios, not a ratio of medians), the spreads
// are the lowest and highest of the main figures, text fields and lists
// come from the first run, Runs is the count, and ElapsedSeconds the
// total. Counts of failures (undelivered, rejected, failed) are the
// highest, not the median: one bad run must show.
func Summarize(runs []Result) Result {
	if len(runs) == 0 {
		return Result{}
	}
	out := runs[0]
	ov := reflect.ValueOf(&out).Elem()
	for i := range ov.NumField() {
		f := ov.Field(i)
		name := ov.Type().Field(i).Name
		if name == "Spread" || name == "Runs" || !isNumber(f.Kind()) {
			continue
		}
		vals := make([]float64, len(runs))
		for j := range runs {
			vals[j] = number(reflect.ValueOf(runs[j]).Field(i))
		}
		v := median(vals)
		if worstCounts[name] {
			v = slices.Max(vals)
		}
		setNumber(f, v)
	}
	total := 0.0
	for _, r := range runs {
		total += r.ElapsedSeconds
	}
	out.ElapsedSeconds = round(total, 1)
	out.Runs = len(runs)
	for k, p := range spreadOf(&out) {
		lo, hi := *p[0], *p[0]
		for j := range runs {
			v := *spreadOf(&runs[j])[k][0]
			lo, hi = min(lo, v), max(hi, v)
		}
		*p[1], *p[2] = lo, hi
	}
	return out
}

// worstCounts are the fields Summarize takes the highest of.
var worstCounts = map[string]bool{"PeakRejected": true, "PeakFailed": true, "Undelivered": true,
	"StormFailed": true, "BaselineUndelivered": true, "MosquittoUndelivered": true}

func isNumber(k reflect.Kind) bool {
	switch k {
	case reflect.Int, reflect.Int64, reflect.Uint64, reflect.Float64:
		return true
	}
	return false
}

func number(v reflect.Value) float64 {
	switch v.Kind() {
	case reflect.Int, reflect.Int64:
		return float64(v.Int())
	case reflect.Uint64:
		return float64(v.Uint())
	}
	return v.Float()
}

func setNumber(v reflect.Value, x float64) {
	switch v.Kind() {
	case reflect.Int, reflect.Int64:
		v.SetInt(int64(round(x, 0)))
	case reflect.Uint64:
		v.SetUint(uint64(round(x, 0)))
	default:
		v.SetFloat(round(x, 3))
	}
}

// median of xs (not empty): the middle value, or the mean of the middle two.
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
