package demo

import (
	"testing"
	"time"
)

// TestFitPhase: with a duration, every mode of the longest attack cycle
// gets a phase within it (a 30 s demo showed only the first mode of each
// cycle).
func TestFitPhase(t *testing.T) {
	longest := 0
	for _, c := range AttackCycles {
		longest = max(longest, len(c))
	}
	for _, tc := range []struct {
		d    time.Duration
		want time.Duration
	}{
		{0, 30 * time.Second},
		{10 * time.Minute, 30 * time.Second},
		{30 * time.Second, 6333333333},
		{5 * time.Second, 5 * time.Second},
	} {
		got := fitPhase(tc.d)
		if got != tc.want {
			t.Errorf("fitPhase(%s) = %s, want %s", tc.d, got, tc.want)
		}
		if tc.d >= 30*time.Second && time.Duration(longest)*(got+phaseDrain) > tc.d {
			t.Errorf("fitPhase(%s) = %s: %d phases take longer than the demo", tc.d, got, longest)
		}
	}
}
