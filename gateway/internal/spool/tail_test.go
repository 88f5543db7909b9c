package spool

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
)

// Every Peek, whether the tail or the file answers it, returns what the
// file holds: through concurrent appends, removals of random keys, the
// tail's evictions (a small tail here) and a reopen.
func TestPeekFromMemoryMatchesDisk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	q := open(t, path, Options{NoSync: true})
	q.tail = newTail(q.next, 64, 4<<10) // both bounds reached below
	rng := rand.New(rand.NewPCG(1, 2))
	var fromMemory, fromDisk int
	check := func() {
		t.Helper()
		hi := q.next
		for _, max := range []int{1, 7, 1000} {
			for after := uint64(0); after <= hi; after++ {
				got, err := q.Peek(after, max)
				if err != nil {
					t.Fatal(err)
				}
				want, err := q.peekDisk(after, max)
				if err != nil {
					t.Fatal(err)
				}
				if !sameEntries(got, want) {
					t.Fatalf("Peek(%d, %d) = %s, the file holds %s", after, max, keys(got), keys(want))
				}
				q.mu.Lock()
				_, ok := q.tail.peek(after, max)
				q.mu.Unlock()
				if ok {
					fromMemory++
				} else {
					fromDisk++
				}
			}
		}
	}
	seq := map[string]uint64{}
	for round := range 30 {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for g := range 4 {
			dev := fmt.Sprintf("dev-%d", g)
			n := 1 + rng.IntN(8)
			wg.Go(func() {
				for range n {
					mu.Lock()
					seq[dev]++
					s := seq[dev]
					mu.Unlock()
					data := bytes.Repeat([]byte{byte(s)}, 1+int(s*37%300))
					if err := q.Append(dev, s, data); err != nil {
						t.Error(err)
					}
				}
			})
		}
		wg.Wait()
		// Remove a few random queued keys, as the relay's acks do.
		all := all(t, q)
		var rm []uint64
		for _, e := range all {
			if rng.IntN(3) == 0 {
				rm = append(rm, e.Key)
			}
		}
		if err := q.Remove(rm...); err != nil {
			t.Fatal(err)
		}
		check()
		if round == 20 {
			q.Close()
			q = open(t, path, Options{NoSync: true})
			q.tail = newTail(q.next, 64, 4<<10)
			check()
		}
	}
	if fromMemory == 0 || fromDisk == 0 {
		t.Fatalf("memory answered %d peeks, the file %d: both paths must be exercised", fromMemory, fromDisk)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.tail.hi-q.tail.lo > 64 || q.tail.bytes > 4<<10 {
		t.Fatalf("tail holds keys %d..%d, %d bytes: over its bounds", q.tail.lo, q.tail.hi, q.tail.bytes)
	}
}

func sameEntries(a, b []Entry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Key != b[i].Key || a[i].Dev != b[i].Dev || a[i].Seq != b[i].Seq || !bytes.Equal(a[i].Data, b[i].Data) {
			return false
		}
	}
	return true
}

func keys(es []Entry) string {
	var b bytes.Buffer
	for _, e := range es {
		fmt.Fprintf(&b, "%d ", e.Key)
	}
	return b.String()
}
