package fleet

// The device's buffer: records waiting to be sent or acknowledged, in order.

import (
	"cmp"
	"slices"
	"time"
)

// requeue puts a message answered 0x97 (quota exceeded: rate_limited, or
// a gateway that cannot store) back into the buffer in its order, and holds
// sending for a backoff that grows with such answers in a row.
func (r *runner) requeue(e *entry) {
	r.pending = append(r.pending, e)
	slices.SortFunc(r.pending, func(a, b *entry) int { return cmp.Compare(a.id, b.id) })
	r.f.ctr.buffered.Add(1)
	r.quota++
	d := min(250*time.Millisecond<<min(r.quota, 7), 30*time.Second)
	r.holdC = time.After(time.Duration(float64(d) * (0.5 + r.rng.Float64())))
}

// add appends a new message to the buffer.
func (r *runner) add(e *entry) {
	r.nextID++
	e.id = r.nextID
	r.pending = append(r.pending, e)
	r.f.ctr.generated.Add(1)
	r.f.ctr.buffered.Add(1)
	r.trim()
}

// trim drops the oldest messages beyond the buffer's bound.
func (r *runner) trim() {
	if over := len(r.pending) + len(r.inflight) - r.f.cfg.Buffer; over > 0 {
		over = min(over, len(r.pending))
		clear(r.pending[:over])
		r.pending = r.pending[over:]
		r.f.ctr.dropped.Add(uint64(over))
		r.f.ctr.buffered.Add(-int64(over))
	}
}
