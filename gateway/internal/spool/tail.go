package spool

// Bounds of the in-memory tail.
const (
	tailSlots    = 16384
	tailMaxBytes = 16 << 20
)

// tail keeps the newest committed records in memory, so that a Peek right
// behind the appends (a relay that keeps up) reads no disk and copies no
// data. It holds the records of keys lo..hi-1, all of them: keys are
// assigned in order, records enter in key order after their commit, and
// leave oldest first when the ring or the byte bound is full. A removed
// record stays as a gap marker without its data. Guarded by Queue.mu.
type tail struct {
	slots    []tailSlot // key % len(slots)
	lo, hi   uint64
	bytes    int64 // data held
	maxBytes int64
}

type tailSlot struct {
	key  uint64
	dev  string
	seq  uint64
	data []byte
	gone bool // removed from the queue
}

func newTail(next uint64, slots int, maxBytes int64) *tail {
	return &tail{slots: make([]tailSlot, slots), lo: next, hi: next, maxBytes: maxBytes}
}

// add appends the record of key, which must be hi.
func (t *tail) add(key uint64, dev string, seq uint64, data []byte) {
	if key != t.hi {
		// Cannot happen (keys are handed out in order); start afresh
		// rather than hold a gap that Peek would take for removals.
		t.reset(key)
	}
	if t.hi-t.lo == uint64(len(t.slots)) {
		t.evict()
	}
	t.slots[key%uint64(len(t.slots))] = tailSlot{key: key, dev: dev, seq: seq, data: data}
	t.bytes += int64(len(data))
	t.hi = key + 1
	for t.bytes > t.maxBytes && t.lo < t.hi {
		t.evict()
	}
}

// evict drops the oldest record.
func (t *tail) evict() {
	s := &t.slots[t.lo%uint64(len(t.slots))]
	t.bytes -= int64(len(s.data))
	*s = tailSlot{}
	t.lo++
}

// reset empties the tail; the next record is key next.
func (t *tail) reset(next uint64) {
	clear(t.slots)
	t.lo, t.hi, t.bytes = next, next, 0
}

// remove marks a removed key, releasing its data.
func (t *tail) remove(key uint64) {
	if key < t.lo || key >= t.hi {
		return
	}
	s := &t.slots[key%uint64(len(t.slots))]
	t.bytes -= int64(len(s.data))
	s.data, s.gone = nil, true
}

// peek returns up to max records with keys above after and ok, or ok false
// when the tail does not hold the first of them (the disk must answer).
func (t *tail) peek(after uint64, max int) (out []Entry, ok bool) {
	from := after + 1
	if after == ^uint64(0) || from >= t.hi {
		return nil, true // nothing committed above after
	}
	if from < t.lo {
		return nil, false
	}
	out = make([]Entry, 0, min(uint64(max), t.hi-from))
	for k := from; k < t.hi && len(out) < max; k++ {
		s := &t.slots[k%uint64(len(t.slots))]
		if s.gone {
			continue
		}
		out = append(out, Entry{Key: k, Dev: s.dev, Seq: s.seq, Data: s.data})
	}
	return out, true
}
