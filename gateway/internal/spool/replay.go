package spool

import (
	"bytes"
	"fmt"
)

// Outcome is the replay rule's judgement of a record's seq against its
// device's last accepted one (see the package documentation, Replay).
type Outcome uint8

// Outcomes of [Judge]. The zero Outcome is none: the record was not judged
// (an append that failed before, with an error).
const (
	// Accepted: seq lies above the last accepted seq, by at most
	// [Options.MaxSeqJump] (a device's first seq counts from 0).
	Accepted Outcome = iota + 1
	// Duplicate: seq equals the last accepted seq and the record's
	// (non-empty) mark equals the one stored with it: the record is already
	// stored. Two copies of one message may race (a device resends on a new
	// connection while the first copy waits for its commit); one is stored
	// and the other is a Duplicate, whichever order they commit in.
	Duplicate
	// Replay: seq at or below the last accepted seq, and not a Duplicate.
	Replay
	// SeqJump: seq more than [Options.MaxSeqJump] past the last accepted
	// seq, or, for a device's first record, past 0.
	SeqJump
)

var outcomeNames = [...]string{"none", "accepted", "duplicate", "replay", "seq jump"}

// String names the outcome.
func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return fmt.Sprintf("outcome(%d)", uint8(o))
}

// Result is an [Outcome] with what the record was judged against.
type Result struct {
	Outcome Outcome
	// Last is the device's last accepted seq the record was judged against
	// (including appends committed before it in the same batch), and
	// HasLast whether the device had one; Last is 0 when it had none.
	Last    uint64
	HasLast bool
	// Limit is the queue's [Options.MaxSeqJump].
	Limit uint64
}

// judge is the replay rule, the one place it is written: a record of seq
// and mark against the device's last accepted seq (ok: it has one) and the
// mark stored with it. The committer applies it to every append;
// [Queue.Judge] applies it to the committed state for callers that want to
// know before they append.
func judge(seq uint64, mark []byte, last uint64, lastMark []byte, ok bool, limit uint64) Result {
	r := Result{Last: last, HasLast: ok, Limit: limit}
	if !ok {
		r.Last, last = 0, 0
	}
	switch {
	case ok && seq == last && len(mark) > 0 && bytes.Equal(mark, lastMark):
		r.Outcome = Duplicate
	case ok && seq <= last:
		r.Outcome = Replay
	case seq-last > limit:
		r.Outcome = SeqJump
	default:
		r.Outcome = Accepted
	}
	return r
}

// Judge applies the replay rule to a record of dev with seq and mark
// against dev's committed last accepted seq, without appending. The answer
// of a later [Queue.AppendMarked] of the same record is final: appends
// still waiting for their commit may change it.
func (q *Queue) Judge(dev string, seq uint64, mark []byte) Result {
	q.mu.Lock()
	last, ok := q.last[dev]
	lastMark := q.marks[dev]
	q.mu.Unlock()
	return judge(seq, mark, last, lastMark, ok, q.maxJump)
}

// RefusedError is the error of [Queue.Append] for a record the replay rule
// refuses (any [Outcome] but Accepted): nothing was written.
type RefusedError struct {
	Dev    string
	Seq    uint64
	Result Result
}

func (e *RefusedError) Error() string {
	if !e.Result.HasLast {
		return fmt.Sprintf("spool: seq %d of %q refused (%s): the device has no last accepted seq, jump limit %d",
			e.Seq, e.Dev, e.Result.Outcome, e.Result.Limit)
	}
	return fmt.Sprintf("spool: seq %d of %q refused (%s): last accepted %d, jump limit %d",
		e.Seq, e.Dev, e.Result.Outcome, e.Result.Last, e.Result.Limit)
}

// Advance commits seq (and mark, at most 64 bytes) as dev's last accepted
// seq without queueing a record, under the replay rule of every append:
// the device's messages that are not relayed (its status records) share
// one replay window with its telemetry. It returns the rule's judgement
// (the seq was committed if and only if its Outcome is [Accepted]) once
// the commit is on disk; the error is why it was not judged. It does not
// count against the queue's bounds.
func (q *Queue) Advance(dev string, seq uint64, mark []byte) (Result, error) {
	if len(mark) > maxMarkLen {
		return Result{}, fmt.Errorf("spool: mark of %d bytes, limit %d", len(mark), maxMarkLen)
	}
	if dev == "" || len(dev) > maxDevLen {
		return Result{}, fmt.Errorf("spool: device ID of %d bytes, want 1 to %d", len(dev), maxDevLen)
	}
	if res := q.Judge(dev, seq, mark); res.Outcome != Accepted {
		return res, nil
	}
	r := requestPool.Get().(*request)
	r.dev, r.seq, r.mark, r.data, r.value, r.size, r.keys, r.key, r.res = dev, seq, mark, nil, r.value[:0], 0, nil, 0, Result{}
	r.seqOnly = true
	err := q.submit(r)
	res := r.res
	if err != nil {
		res = Result{}
	}
	r.seqOnly, r.mark = false, nil
	requestPool.Put(r)
	return res, err
}
