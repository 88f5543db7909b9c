package spool

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
)

// wantJump wants err to be a replay saying "seq jump".
func wantJump(t *testing.T, err error, what string) {
	t.Helper()
	if outcomeOf(err) != SeqJump {
		t.Fatalf("%s: %v, want a replay with detail \"seq jump\"", what, err)
	}
}

// TestSeqJump: one record with seq 2^64-1 made every later seq of the
// device a replay, for good. A seq may now advance at most MaxSeqJump past
// the last accepted one (from 0 for a device's first record).
func TestSeqJump(t *testing.T) {
	q := open(t, filepath.Join(t.TempDir(), "q.db"), Options{NoSync: true})
	wantJump(t, q.Append("a", ^uint64(0), nil), "first seq 2^64-1")
	wantJump(t, q.Append("a", DefaultMaxSeqJump+1, nil), "first seq just over the limit")
	if err := q.Append("a", 10, nil); err != nil {
		t.Fatal(err)
	}
	wantJump(t, q.Append("a", ^uint64(0), nil), "seq 2^64-1 after 10")
	wantJump(t, q.Append("a", 10+DefaultMaxSeqJump+1, nil), "just over the limit")
	if err := q.Append("a", 10+DefaultMaxSeqJump, nil); err != nil {
		t.Fatalf("a jump of exactly the limit: %v", err)
	}
	if s, _ := q.LastSeq("a"); s != 10+DefaultMaxSeqJump {
		t.Fatalf("last seq %d", s)
	}
}

// TestForget: after Forget the device starts afresh, durably, whether its
// last seq was in "last" or only in lastlog.
func TestForget(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	q := open(t, path, Options{NoSync: true})
	for i := range compactEvery + 10 { // one compaction, then lastlog entries
		if err := q.Append(fmt.Sprintf("d%d", i%3), uint64(i+1), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Append("locked", DefaultMaxSeqJump, nil); err != nil {
		t.Fatal(err)
	}
	if err := q.Forget("locked"); err != nil {
		t.Fatal(err)
	}
	if err := q.Forget("d1"); err != nil {
		t.Fatal(err)
	}
	if _, ok := q.LastSeq("locked"); ok {
		t.Fatal("forgotten device still has a last seq")
	}
	n := q.Len()
	q.Close()
	q = open(t, path, Options{NoSync: true})
	if _, ok := q.LastSeq("locked"); ok {
		t.Fatal("forgotten device has a last seq after reopening")
	}
	if _, ok := q.LastSeq("d1"); ok {
		t.Fatal("forgotten d1 has a last seq after reopening")
	}
	if s, ok := q.LastSeq("d2"); !ok || s != compactEvery+10 {
		t.Fatalf("d2: last seq %d %v, want %d", s, ok, compactEvery+10)
	}
	if q.Len() != n {
		t.Fatalf("%d records after reopening, want %d: Forget keeps queued records", q.Len(), n)
	}
	if err := q.Append("locked", 1, nil); err != nil {
		t.Fatalf("forgotten device's seq 1: %v", err)
	}
	if err := q.Append("locked", 1, nil); outcomeOf(err) != Replay {
		t.Fatalf("seq 1 again: %v", err)
	}
	if err := q.Forget(""); err == nil {
		t.Fatal("Forget of an empty ID succeeded")
	}
}

// TestOutcomes: AppendMarked answers with the replay rule's outcome and
// what it was judged against, and Judge, the same rule on the committed
// state, gives the same answer without appending.
func TestOutcomes(t *testing.T) {
	const limit = 1000
	q := open(t, filepath.Join(t.TempDir(), "q.db"), Options{NoSync: true, MaxSeqJump: limit})
	mark := []byte("m5")
	cases := []struct {
		name string
		seq  uint64
		mark []byte
		want Result
	}{
		{"first seq over the limit", limit + 1, nil, Result{Outcome: SeqJump, Limit: limit}},
		{"first", 5, mark, Result{Outcome: Accepted, Limit: limit}},
		{"same seq, same mark", 5, mark, Result{Outcome: Duplicate, Last: 5, HasLast: true, Limit: limit}},
		{"same seq, other mark", 5, []byte("other"), Result{Outcome: Replay, Last: 5, HasLast: true, Limit: limit}},
		{"same seq, no mark", 5, nil, Result{Outcome: Replay, Last: 5, HasLast: true, Limit: limit}},
		{"below", 4, mark, Result{Outcome: Replay, Last: 5, HasLast: true, Limit: limit}},
		{"over the limit", 5 + limit + 1, nil, Result{Outcome: SeqJump, Last: 5, HasLast: true, Limit: limit}},
		{"at the limit", 5 + limit, nil, Result{Outcome: Accepted, Last: 5, HasLast: true, Limit: limit}},
	}
	for _, c := range cases {
		judged := q.Judge("d", c.seq, c.mark)
		res, err := q.AppendMarked("d", c.seq, c.mark, []byte("x"))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if res != c.want || judged != c.want {
			t.Fatalf("%s: AppendMarked %+v, Judge %+v, want %+v", c.name, res, judged, c.want)
		}
	}
	if n := q.Len(); n != 2 {
		t.Fatalf("%d records stored, want the 2 accepted", n)
	}
	var re *RefusedError
	if err := q.Append("d", 3, nil); !errors.As(err, &re) || re.Result.Outcome != Replay || re.Result.Last != 5+limit {
		t.Fatalf("Append of a replay: %v, want a *RefusedError with outcome replay, last %d", err, 5+limit)
	}
	if _, err := q.AppendMarked("d", 1<<20, make([]byte, maxMarkLen+1), nil); err == nil {
		t.Fatal("a mark over the limit was judged")
	}
}

// TestAdvance: a seq committed without a record (a device's status record)
// shares the device's replay window with its records, survives a reopen,
// queues nothing, recognises its own resend by the mark, and is not held
// back by a full queue.
func TestAdvance(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	q := open(t, path, Options{NoSync: true, MaxRecords: 1})
	if err := q.Append("a", 5, []byte("rec")); err != nil {
		t.Fatal(err)
	}
	res, err := q.Advance("a", 6, []byte("m6"))
	if err != nil || res.Outcome != Accepted {
		t.Fatalf("advance to 6 on a full queue: %v %v", res.Outcome, err)
	}
	if res, _ := q.Advance("a", 6, []byte("m6")); res.Outcome != Duplicate {
		t.Fatalf("resend of 6: %v, want duplicate", res.Outcome)
	}
	if res, _ := q.Advance("a", 6, []byte("other")); res.Outcome != Replay {
		t.Fatalf("another message with seq 6: %v, want replay", res.Outcome)
	}
	if res, _ := q.Advance("a", 4, nil); res.Outcome != Replay {
		t.Fatalf("seq 4: %v, want replay", res.Outcome)
	}
	if q.Len() != 1 {
		t.Fatalf("%d records queued, want 1", q.Len())
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q = open(t, path, Options{NoSync: true})
	if s, _ := q.LastSeq("a"); s != 6 {
		t.Fatalf("last seq %d after reopen, want 6", s)
	}
	if outcomeOf(q.Append("a", 6, []byte("rec"))) != Replay {
		t.Fatal("a record reusing the status record's seq was not a replay")
	}
	if _, err := q.Advance("", 1, nil); err == nil {
		t.Fatal("empty device ID accepted")
	}
}
