package fleet

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// histogram records durations in log-linear buckets (HDR style: 16
// sub-buckets per power of two, so a bucket is at most 1/16 = 6 % wide) from
// 1 µs to about 18 minutes. Memory is fixed; Record is lock-free.
type histogram struct {
	counts [histBuckets]atomic.Uint64
}

const (
	histSub     = 16 // sub-buckets per power of two
	histShift   = 4  // log2(histSub)
	histMaxExp  = 30 // 2^30 µs ≈ 18 min
	histBuckets = (histMaxExp + 1) * histSub
)

// bucketOf maps a value in microseconds to its bucket index.
func bucketOf(us uint64) int {
	if us < histSub {
		return int(us)
	}
	e := bits.Len64(us) - 1 - histShift // us >> e is in [16, 32)
	i := (e+1)*histSub + int(us>>e) - histSub
	return min(i, histBuckets-1)
}

// bucketValue is the midpoint of bucket i, in microseconds.
func bucketValue(i int) float64 {
	if i < histSub {
		return float64(i)
	}
	e := i/histSub - 1
	lo := uint64(histSub+i%histSub) << e
	return float64(lo) + float64(uint64(1)<<e)/2
}

func (h *histogram) Record(d time.Duration) {
	us := d.Microseconds()
	if us < 0 {
		us = 0
	}
	h.counts[bucketOf(uint64(us))].Add(1)
}

// Quantiles returns the durations at the given quantiles (0..1, ascending),
// 0 for an empty histogram.
func (h *histogram) Quantiles(qs ...float64) []time.Duration {
	var snap [histBuckets]uint64
	var total uint64
	for i := range snap {
		snap[i] = h.counts[i].Load()
		total += snap[i]
	}
	out := make([]time.Duration, len(qs))
	if total == 0 {
		return out
	}
	var cum uint64
	j := 0
	for i := 0; i < histBuckets && j < len(qs); i++ {
		cum += snap[i]
		for j < len(qs) && float64(cum) >= qs[j]*float64(total) && snap[i] > 0 {
			out[j] = time.Duration(bucketValue(i) * float64(time.Microsecond))
			j++
		}
	}
	return out
}

// Count is the number of values recorded.
func (h *histogram) Count() uint64 {
	var n uint64
	for i := range h.counts {
		n += h.counts[i].Load()
	}
	return n
}
