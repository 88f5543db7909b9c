package fleet

import (
	"math"
	"testing"
	"time"
)

func TestHistogramBuckets(t *testing.T) {
	prev := -1
	for us := uint64(0); us < 1<<22; us = us*17/16 + 1 {
		i := bucketOf(us)
		if i < prev {
			t.Fatalf("bucket of %d (%d) below previous (%d)", us, i, prev)
		}
		prev = i
		if v := bucketValue(i); math.Abs(v-float64(us)) > float64(us)/16+1 {
			t.Fatalf("value %d in bucket %d worth %v", us, i, v)
		}
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h histogram
	if q := h.Quantiles(0.5); q[0] != 0 {
		t.Fatalf("empty: %v", q)
	}
	for i := 1; i <= 1000; i++ {
		h.Record(time.Duration(i) * 100 * time.Microsecond) // 0.1 .. 100 ms
	}
	q := h.Quantiles(0.5, 0.99)
	if d := q[0] - 50*time.Millisecond; d < -4*time.Millisecond || d > 4*time.Millisecond {
		t.Errorf("p50 %v", q[0])
	}
	if d := q[1] - 99*time.Millisecond; d < -7*time.Millisecond || d > 7*time.Millisecond {
		t.Errorf("p99 %v", q[1])
	}
	if h.Count() != 1000 {
		t.Errorf("count %d", h.Count())
	}
}
