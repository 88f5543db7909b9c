package anomaly

import "math"

// learnRate is the weight of one window in a baseline once its warm-up is
// over: an exponentially weighted mean with a memory of about 20 windows,
// so a slow drift is followed and a sudden change is not.
const learnRate = 0.05

// calmWindows ends an episode: this many windows in a row at or under the
// threshold, after which a new crossing is a new episode (and a new event).
const calmWindows = 3

// baseline is what a device's windows of one metric look like: a robust
// running estimate (mean and mean absolute deviation, exponentially
// weighted) and the state of an episode. Fixed size.
type baseline struct {
	mean, dev float64
	n         int32 // windows learned
	alarm     bool  // in an episode
	calm      uint8 // windows in a row at or under the threshold, in an episode
}

// limits are the thresholds' parameters of one metric.
type limits struct {
	factor     float64 // the figure exceeds factor × baseline...
	deviations float64 // ...and baseline + deviations × deviation...
	floor      float64 // ...and this absolute floor
	warmup     int32   // windows learned before any figure is judged
}

// threshold is the level a figure must exceed to be an anomaly.
func (b *baseline) threshold(l limits) float64 {
	return max(b.mean*l.factor, b.mean+l.deviations*b.dev, l.floor)
}

// observe judges one window's figure x against the baseline, then learns
// it. It returns the threshold and the baseline x was judged against, and
// whether x starts an episode (true at most once per episode). A figure above the threshold is learned as the
// threshold: an attack moves the baseline only slowly, and a lasting change
// becomes the new normal, which ends the episode.
func (b *baseline) observe(x float64, l limits) (threshold, mean float64, start bool) {
	mean = b.mean
	if b.n >= l.warmup {
		threshold = b.threshold(l)
		switch {
		case x > threshold:
			b.calm = 0
			start = !b.alarm
			b.alarm = true
			x = threshold
		case b.alarm:
			if b.calm++; b.calm >= calmWindows {
				b.alarm, b.calm = false, 0
			}
		}
	}
	b.learn(x)
	return threshold, mean, start
}

// learn adds one window: a plain mean over the warm-up, then exponentially
// weighted.
func (b *baseline) learn(x float64) {
	if b.n < math.MaxInt32 {
		b.n++
	}
	if b.n == 1 {
		b.mean, b.dev = x, 0
		return
	}
	a := max(1/float64(b.n), learnRate)
	d := math.Abs(x - b.mean)
	b.mean += a * (x - b.mean)
	b.dev += a * (d - b.dev)
}
