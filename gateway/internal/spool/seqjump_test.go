package spool

import (
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
