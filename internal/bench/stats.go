// Package bench is the load harness of `devicesim bench` and of the gateway's
// BenchmarkPipeline: it measures the figures of docs/design.md#figures in one
// run, on the same machine and with the same messages.
//
// # Pieces
//
//   - [PreSign] makes signed ES256 records for a fleet before any clock runs:
//     signing is the device's cost, not the gateway's.
//   - [Devices] connects a fleet over MQTT 5 with mutual TLS and [Devices.Drive]
//     publishes the pre-signed records QoS 1, as fast as acknowledgements come
//     or at a total rate, noting each send time.
//   - [Subscriber] is a clinician app at the cloud broker: it counts
//     deliveries and, by the message ID "{dev}:{seq}", the latency from the
//     device's PUBLISH to the cloud's delivery.
//   - [VerifyOnly] is the signature check alone on every core, over the same
//     messages: the yardstick of the validated rate.
//   - [Storm] is a reconnect storm (full or resumed mTLS handshakes, each
//     followed by MQTT CONNECT/CONNACK), [Idle] holds idle device connections.
//   - [StartBaseline] is a bare mochi broker with TLS and no checks, the cost
//     of security's reference point.
//   - [StartGateway] runs the gateway binary as a child process, so its
//     resident memory and CPU time are its own ([ProcStat]).
//
// [Run] strings them together into one [Result], printed as one JSON line.
package bench

import (
	"math"
	"slices"
	"sync"
	"time"
)

// Percentile returns the q-quantile (0..1) of sorted by the nearest-rank
// method, 0 for an empty slice.
func Percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	q = math.Min(math.Max(q, 0), 1)
	rank := int(math.Ceil(q * float64(len(sorted))))
	if rank < 1 {
		rank = 1
	}
	return sorted[rank-1]
}

// Latencies collects durations, up to a fixed number of samples (the rest
// are counted but not kept), safe for concurrent use.
type Latencies struct {
	mu      sync.Mutex
	max     int
	samples []time.Duration
	dropped int
}

// NewLatencies keeps at most max samples.
func NewLatencies(max int) *Latencies {
	return &Latencies{max: max, samples: make([]time.Duration, 0, min(max, 1<<16))}
}

// Add records one duration.
func (l *Latencies) Add(d time.Duration) {
	l.mu.Lock()
	if len(l.samples) < l.max {
		l.samples = append(l.samples, d)
	} else {
		l.dropped++
	}
	l.mu.Unlock()
}

// Summary returns the number of samples kept and their p50 and p99.
func (l *Latencies) Summary() (n int, p50, p99 time.Duration) {
	l.mu.Lock()
	s := slices.Clone(l.samples)
	l.mu.Unlock()
	slices.Sort(s)
	return len(s), Percentile(s, 0.50), Percentile(s, 0.99)
}

// Reset forgets every sample.
func (l *Latencies) Reset() {
	l.mu.Lock()
	l.samples, l.dropped = l.samples[:0], 0
	l.mu.Unlock()
}

// ms converts a duration to milliseconds, rounded to 0.01 ms.
func ms(d time.Duration) float64 { return round(float64(d)/float64(time.Millisecond), 2) }

// round rounds x to n decimals.
func round(x float64, n int) float64 {
	p := math.Pow(10, float64(n))
	return math.Round(x*p) / p
}

// Rate is n events over d, per second (0 for d <= 0).
func Rate(n uint64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}
