package spool

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestMain doubles as the crash helper: with SPOOL_CRASH_HELPER set to a
// path, the test binary appends to that queue forever and prints every
// acknowledged "dev seq" line, until the parent test kills it.
func TestMain(m *testing.M) {
	if path := os.Getenv("SPOOL_CRASH_HELPER"); path != "" {
		crashHelper(path)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func crashHelper(path string) {
	q, err := Open(path, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var out sync.Mutex
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dev := fmt.Sprintf("dev-%d", g)
			data := make([]byte, 300)
			for seq := uint64(1); seq <= 1_000_000; seq++ {
				if err := q.Append(dev, seq, data); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(3)
				}
				out.Lock()
				fmt.Fprintf(os.Stdout, "%s %d\n", dev, seq) // one write(2) per line
				out.Unlock()
			}
		}()
	}
	wg.Wait()
}

func open(t testing.TB, path string, o Options) *Queue {
	t.Helper()
	q, err := Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

func all(t testing.TB, q *Queue) []Entry {
	t.Helper()
	es, err := q.Peek(0, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	return es
}

// appendMarked is [Queue.AppendMarked] with a refusal as a [*RefusedError],
// as [Queue.Append] returns it.
func appendMarked(q *Queue, dev string, seq uint64, mark, data []byte) error {
	res, err := q.AppendMarked(dev, seq, mark, data)
	if err == nil && res.Outcome != Accepted {
		return &RefusedError{Dev: dev, Seq: seq, Result: res}
	}
	return err
}

// outcomeOf is the replay rule's outcome in err: Accepted for nil, 0 for
// an error that is not a refusal.
func outcomeOf(err error) Outcome {
	if err == nil {
		return Accepted
	}
	var re *RefusedError
	if errors.As(err, &re) {
		return re.Result.Outcome
	}
	return 0
}

func TestAppendPeekRemove(t *testing.T) {
	q := open(t, filepath.Join(t.TempDir(), "q.db"), Options{NoSync: true})
	if q.Len() != 0 || q.Bytes() != 0 || q.OldestAge() != 0 {
		t.Fatalf("empty queue: len %d bytes %d age %v", q.Len(), q.Bytes(), q.OldestAge())
	}
	if _, ok := q.LastSeq("a"); ok {
		t.Fatal("LastSeq of unknown device reported ok")
	}
	for i := uint64(1); i <= 5; i++ {
		if err := q.Append("a", i, []byte(fmt.Sprintf("rec%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-q.Notify():
	default:
		t.Fatal("no notification after append")
	}
	if q.Len() != 5 || q.Bytes() != 20 {
		t.Fatalf("len %d bytes %d, want 5 and 20", q.Len(), q.Bytes())
	}
	for deadline := time.Now().Add(10 * time.Second); q.OldestAge() <= 0; {
		if time.Now().After(deadline) {
			t.Fatal("OldestAge stays 0 with records queued")
		}
		time.Sleep(time.Millisecond)
	}
	if s, ok := q.LastSeq("a"); !ok || s != 5 {
		t.Fatalf("LastSeq = %d, %v", s, ok)
	}
	es, err := q.Peek(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2 || es[0].Seq != 1 || es[1].Seq != 2 || string(es[1].Data) != "rec2" || es[0].Dev != "a" {
		t.Fatalf("Peek(0,2) = %+v", es)
	}
	rest, err := q.Peek(es[1].Key, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(rest) != 3 || rest[0].Seq != 3 || rest[0].Key <= es[1].Key {
		t.Fatalf("Peek after = %+v", rest)
	}
	if err := q.Remove(es[0].Key, es[1].Key, 999999); err != nil {
		t.Fatal(err)
	}
	if q.Len() != 3 || q.Bytes() != 12 {
		t.Fatalf("after remove: len %d bytes %d", q.Len(), q.Bytes())
	}
	if got := all(t, q); len(got) != 3 || got[0].Seq != 3 {
		t.Fatalf("after remove: %+v", got)
	}
	if err := q.Remove(es[0].Key); err != nil { // already gone: no-op
		t.Fatal(err)
	}
	if q.Len() != 3 {
		t.Fatalf("len %d after removing a missing key", q.Len())
	}
}

func TestReplayAcrossBatches(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	q := open(t, path, Options{NoSync: true})
	if err := q.Append("a", 10, nil); err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{10, 9, 0} {
		err := q.Append("a", seq, nil)
		if outcomeOf(err) != Replay {
			t.Fatalf("Append(a, %d) = %v, want replay", seq, err)
		}
	}
	if err := q.Append("b", 0, nil); err != nil { // first seq of a device may be 0
		t.Fatal(err)
	}
	if err := q.Append("b", 0, nil); outcomeOf(err) != Replay {
		t.Fatalf("second seq 0 = %v, want replay", err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q = open(t, path, Options{NoSync: true})
	if err := q.Append("a", 10, nil); outcomeOf(err) != Replay {
		t.Fatalf("after reopen: %v, want replay", err)
	}
	if err := q.Append("a", 11, nil); err != nil {
		t.Fatal(err)
	}
	if q.Len() != 3 {
		t.Fatalf("len %d, want 3", q.Len())
	}
}

// TestReplayWithinBatch hands one batch straight to commit (the committer is
// idle: nothing else is submitted meanwhile).
func TestReplayWithinBatch(t *testing.T) {
	q := open(t, filepath.Join(t.TempDir(), "q.db"), Options{NoSync: true})
	if err := q.Append("a", 4, []byte("x")); err != nil {
		t.Fatal(err)
	}
	type in struct {
		dev    string
		seq    uint64
		replay bool
	}
	ins := []in{{"a", 5, false}, {"a", 3, true}, {"a", 5, true}, {"b", 1, false}, {"a", 6, false}, {"a", 6, true}, {"b", 1, true}, {"b", 2, false}}
	var batch []*request
	for _, x := range ins {
		r := &request{dev: x.dev, seq: x.seq, size: 1, done: make(chan error, 1)}
		r.value = encodeValue(nil, x.dev, x.seq, time.Now().UnixMilli(), []byte("x"))
		batch = append(batch, r)
	}
	q.mu.Lock()
	q.resCount += len(batch)
	q.resBytes += int64(len(batch))
	q.mu.Unlock()
	q.commit(batch)
	for i, r := range batch {
		if err := <-r.done; err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if got := r.res.Outcome == Replay; got != ins[i].replay {
			t.Errorf("request %d (%s %d): outcome %v, want replay %v", i, ins[i].dev, ins[i].seq, r.res.Outcome, ins[i].replay)
		}
	}
	if s, _ := q.LastSeq("a"); s != 6 {
		t.Errorf("LastSeq(a) = %d, want 6", s)
	}
	if s, _ := q.LastSeq("b"); s != 2 {
		t.Errorf("LastSeq(b) = %d, want 2", s)
	}
	es := all(t, q)
	var got []string
	for _, e := range es {
		got = append(got, fmt.Sprintf("%s%d", e.Dev, e.Seq))
	}
	if strings.Join(got, ",") != "a4,a5,b1,a6,b2" {
		t.Errorf("queue = %v", got)
	}
	if q.Len() != 5 || q.Bytes() != 5 {
		t.Errorf("len %d bytes %d, want 5, 5", q.Len(), q.Bytes())
	}
}

// TestSameSeqConcurrently: many callers race the same (dev, seq); exactly one wins.
func TestSameSeqConcurrently(t *testing.T) {
	q := open(t, filepath.Join(t.TempDir(), "q.db"), Options{NoSync: true})
	for seq := uint64(1); seq <= 20; seq++ {
		var ok, replays atomic.Int32
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := q.Append("a", seq, nil)
				switch {
				case err == nil:
					ok.Add(1)
				case outcomeOf(err) == Replay:
					replays.Add(1)
				default:
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if ok.Load() != 1 || replays.Load() != 15 {
			t.Fatalf("seq %d: %d accepted, %d replays", seq, ok.Load(), replays.Load())
		}
	}
	if q.Len() != 20 {
		t.Fatalf("len %d", q.Len())
	}
}

func TestConcurrentAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	q := open(t, path, Options{})
	const devices, workers, perWorker = 8, 32, 100
	var ctr [devices]atomic.Uint64
	var mu sync.Mutex
	accepted := make(map[string]bool)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				d := (w + i) % devices
				dev := fmt.Sprintf("dev%d", d)
				seq := ctr[d].Add(1)
				err := q.Append(dev, seq, []byte(fmt.Sprintf("%s/%d", dev, seq)))
				if err != nil && outcomeOf(err) != Replay {
					t.Error(err)
					return
				}
				if err == nil {
					mu.Lock()
					accepted[fmt.Sprintf("%s %d", dev, seq)] = true
					mu.Unlock()
				}
			}
		}()
	}
	// Peek and Remove concurrently with the appends.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := q.Peek(0, 50); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-done
	if len(accepted) < devices {
		t.Fatalf("only %d appends accepted", len(accepted))
	}
	check := func(q *Queue) {
		t.Helper()
		es := all(t, q)
		if len(es) != len(accepted) || q.Len() != len(accepted) {
			t.Fatalf("queue holds %d (Len %d), accepted %d", len(es), q.Len(), len(accepted))
		}
		seen := make(map[string]bool)
		lastSeq := make(map[string]uint64)
		var lastKey uint64
		for _, e := range es {
			id := fmt.Sprintf("%s %d", e.Dev, e.Seq)
			if !accepted[id] || seen[id] {
				t.Fatalf("entry %s: accepted %v, duplicate %v", id, accepted[id], seen[id])
			}
			seen[id] = true
			if e.Key <= lastKey {
				t.Fatalf("keys not increasing: %d after %d", e.Key, lastKey)
			}
			lastKey = e.Key
			if s, ok := lastSeq[e.Dev]; ok && e.Seq <= s {
				t.Fatalf("%s: seq %d after %d", e.Dev, e.Seq, s)
			}
			lastSeq[e.Dev] = e.Seq
			if string(e.Data) != fmt.Sprintf("%s/%d", e.Dev, e.Seq) {
				t.Fatalf("%s: data %q", id, e.Data)
			}
		}
		for dev, s := range lastSeq {
			if got, _ := q.LastSeq(dev); got != s {
				t.Fatalf("LastSeq(%s) = %d, want %d", dev, got, s)
			}
		}
	}
	check(q)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	check(open(t, path, Options{}))
}

func TestFull(t *testing.T) {
	q := open(t, filepath.Join(t.TempDir(), "q.db"), Options{MaxRecords: 3, MaxBytes: 100, NoSync: true})
	for i := uint64(1); i <= 3; i++ {
		if err := q.Append("a", i, []byte("0123456789")); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Append("a", 4, nil); !errors.Is(err, ErrFull) {
		t.Fatalf("4th append = %v, want ErrFull", err)
	}
	if s, _ := q.LastSeq("a"); s != 3 {
		t.Fatalf("a refused append moved LastSeq to %d", s)
	}
	es := all(t, q)
	if err := q.Remove(es[0].Key); err != nil {
		t.Fatal(err)
	}
	if err := q.Append("a", 4, make([]byte, 81)); !errors.Is(err, ErrFull) {
		t.Fatalf("append over MaxBytes = %v, want ErrFull", err)
	}
	if err := q.Append("a", 4, make([]byte, 80)); err != nil {
		t.Fatal(err)
	}
	if q.Len() != 3 || q.Bytes() != 100 {
		t.Fatalf("len %d bytes %d", q.Len(), q.Bytes())
	}
}

func TestRemoveReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	q := open(t, path, Options{})
	for i := uint64(1); i <= 10; i++ {
		if err := q.Append("a", i, []byte("abc")); err != nil {
			t.Fatal(err)
		}
	}
	es := all(t, q)
	var keys []uint64
	for _, e := range es[:6] {
		keys = append(keys, e.Key)
	}
	if err := q.Remove(keys...); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q = open(t, path, Options{})
	got := all(t, q)
	if len(got) != 4 || got[0].Seq != 7 || q.Len() != 4 || q.Bytes() != 12 {
		t.Fatalf("after reopen: %d entries, first %+v, len %d bytes %d", len(got), got[0], q.Len(), q.Bytes())
	}
	if err := q.Remove(got[0].Key, got[1].Key, got[2].Key, got[3].Key); err != nil {
		t.Fatal(err)
	}
	if q.Len() != 0 || q.OldestAge() != 0 {
		t.Fatalf("emptied: len %d age %v", q.Len(), q.OldestAge())
	}
	q.Close()
	// Keys never go back, even after the queue emptied and reopened.
	q = open(t, path, Options{})
	if err := q.Append("b", 1, nil); err != nil {
		t.Fatal(err)
	}
	if e := all(t, q); len(e) != 1 || e[0].Key <= es[len(es)-1].Key {
		t.Fatalf("new key %d not above old %d", e[0].Key, es[len(es)-1].Key)
	}
	if s, _ := q.LastSeq("a"); s != 10 {
		t.Fatalf("LastSeq(a) = %d after the queue emptied, want 10", s)
	}
}

func TestClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	q, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	// Appends in flight when Close starts either commit or report ErrClosed.
	var wg sync.WaitGroup
	var committed sync.Map
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dev := fmt.Sprintf("d%d", g)
			for seq := uint64(1); seq <= 200; seq++ {
				err := q.Append(dev, seq, nil)
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				committed.Store(fmt.Sprintf("%s %d", dev, seq), true)
			}
		}()
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := q.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := q.Append("x", 1, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close = %v", err)
	}
	if err := q.Remove(1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Remove after Close = %v", err)
	}
	if _, err := q.Peek(0, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Peek after Close = %v", err)
	}
	q = open(t, path, Options{NoSync: true})
	n := 0
	committed.Range(func(k, _ any) bool { n++; return true })
	if q.Len() != n {
		t.Fatalf("reopened with %d records, %d were acknowledged", q.Len(), n)
	}
}

func TestOpenLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	open(t, path, Options{NoSync: true})
	if _, err := Open(path, Options{NoSync: true}); err == nil {
		t.Fatal("second Open of a locked file succeeded")
	}
}

// TestCrash appends from a child process, kills it with SIGKILL, and checks
// that every append the child saw acknowledged is in the reopened queue.
func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a child process")
	}
	path := filepath.Join(t.TempDir(), "q.db")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SPOOL_CRASH_HELPER="+path)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	watchdog := time.AfterFunc(60*time.Second, func() { cmd.Process.Kill() })
	defer watchdog.Stop()

	acked := make(map[string]uint64)
	lines := 0
	killed := false
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			t.Fatalf("helper printed %q", sc.Text())
		}
		seq, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		if seq > acked[f[0]] {
			acked[f[0]] = seq
		}
		lines++
		if lines == 2000 && !killed {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	err = cmd.Wait()
	if !killed {
		t.Fatalf("helper ended before it was killed after %d lines: %v", lines, err)
	}
	t.Logf("%d appends acknowledged before SIGKILL took effect", lines)

	q := open(t, path, Options{})
	present := make(map[string]map[uint64]bool)
	for _, e := range all(t, q) {
		if present[e.Dev] == nil {
			present[e.Dev] = make(map[uint64]bool)
		}
		if present[e.Dev][e.Seq] {
			t.Fatalf("%s %d stored twice", e.Dev, e.Seq)
		}
		present[e.Dev][e.Seq] = true
	}
	for dev, max := range acked {
		for s := uint64(1); s <= max; s++ { // each helper goroutine appends 1, 2, 3...
			if !present[dev][s] {
				t.Fatalf("acknowledged %s %d lost", dev, s)
			}
		}
		if last, _ := q.LastSeq(dev); last < max {
			t.Fatalf("LastSeq(%s) = %d, acknowledged %d", dev, last, max)
		}
	}
}

// BenchmarkAppendParallel measures group commit with fsync: 32 goroutines
// per CPU append 300-byte records, each goroutine its own device.
func BenchmarkAppendParallel(b *testing.B) {
	q := open(b, filepath.Join(b.TempDir(), "q.db"), Options{MaxRecords: 1 << 30, MaxBytes: 1 << 40})
	data := make([]byte, 300)
	var devs atomic.Int64
	b.SetParallelism(32)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		dev := fmt.Sprintf("dev-%05d", devs.Add(1))
		var seq uint64
		for pb.Next() {
			seq++
			if err := q.Append(dev, seq, data); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
}

// An append of the device's last seq with the same mark is a duplicate
// (nothing written), with another mark or none a replay; two copies racing
// to the committer store one record, whichever commits first, in one batch
// or in two, and the mark survives a reopen.
func TestDuplicateAppend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	q := open(t, path, Options{NoSync: true, CommitDelay: 5 * time.Millisecond})
	if err := appendMarked(q, "d", 1, []byte("m1"), []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := appendMarked(q, "d", 1, []byte("m1"), []byte("x")); outcomeOf(err) != Duplicate {
		t.Fatalf("same seq, same mark: %v, want ErrDuplicate", err)
	}
	for _, mark := range [][]byte{[]byte("other"), nil} {
		if err := appendMarked(q, "d", 1, mark, []byte("x")); outcomeOf(err) != Replay {
			t.Fatalf("same seq, mark %q: %v, want a replay", mark, err)
		}
	}
	if err := q.Append("e", 5, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := q.Append("e", 5, []byte("x")); outcomeOf(err) != Replay {
		t.Fatalf("unmarked resend: %v, want a replay", err)
	}

	// Pairs of copies, with other devices' appends around them so that
	// batches form.
	const rounds = 40
	var dups atomic.Int64
	for seq := uint64(2); seq < 2+rounds; seq++ {
		mark := []byte(fmt.Sprintf("m%d", seq))
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range errs {
			wg.Go(func() { errs[i] = appendMarked(q, "d", seq, mark, []byte("x")) })
		}
		for i := range 4 {
			wg.Go(func() {
				if err := q.Append(fmt.Sprintf("o%d", i), seq, []byte("y")); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		nils := 0
		for _, err := range errs {
			switch {
			case err == nil:
				nils++
			case outcomeOf(err) == Duplicate:
				dups.Add(1)
			default:
				t.Fatalf("seq %d: %v", seq, err)
			}
		}
		if nils != 1 {
			t.Fatalf("seq %d: %d copies stored (%v)", seq, nils, errs)
		}
	}
	n := 0
	for _, e := range all(t, q) {
		if e.Dev == "d" {
			n++
		}
	}
	if n != 1+rounds {
		t.Fatalf("%d records of d, want %d", n, 1+rounds)
	}
	q.Close()
	q = open(t, path, Options{NoSync: true})
	last := uint64(1 + rounds)
	if err := appendMarked(q, "d", last, []byte(fmt.Sprintf("m%d", last)), nil); outcomeOf(err) != Duplicate {
		t.Fatalf("after a reopen: %v, want ErrDuplicate", err)
	}
}

// The mark of a device's last record is stored with its seq, replaced by the
// next append, and survives a reopen.
func TestMarkSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	q := open(t, path, Options{NoSync: true})
	if err := appendMarked(q, "d", 1, []byte("first"), []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := appendMarked(q, "d", 2, []byte("second"), []byte("y")); err != nil {
		t.Fatal(err)
	}
	if err := q.Append("e", 9, []byte("z")); err != nil {
		t.Fatal(err)
	}
	if appendMarked(q, "d", 3, make([]byte, 65), nil) == nil {
		t.Fatal("65-byte mark accepted")
	}
	q.Close()
	q = open(t, path, Options{NoSync: true})
	if seq, mark, ok := q.Last("d"); !ok || seq != 2 || string(mark) != "second" {
		t.Fatalf("Last(d) = %d %q %v", seq, mark, ok)
	}
	if seq, mark, ok := q.Last("e"); !ok || seq != 9 || mark != nil {
		t.Fatalf("Last(e) = %d %q %v", seq, mark, ok)
	}
	if _, _, ok := q.Last("nobody"); ok {
		t.Fatal("unknown device has a last seq")
	}
}

// The last seqs live in lastlog between compactions and in "last" after
// one; a reopen finds the newest of each device either way, with its mark.
func TestLastSeqsAcrossCompactions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	q := open(t, path, Options{NoSync: true})
	const devices = 7
	n := 2*compactEvery + 5 // one commit each: two compactions, then 5 logged
	want := map[string]uint64{}
	for i := range n {
		dev := fmt.Sprintf("dev-%d", i%devices)
		mark := []byte(fmt.Sprintf("m%d", i))
		if i%devices == 3 {
			mark = nil // a device without marks
		}
		if err := appendMarked(q, dev, uint64(i+1), mark, []byte("x")); err != nil {
			t.Fatal(err)
		}
		want[dev] = uint64(i + 1)
	}
	if q.logLen != 5 || len(q.dirty) != 5 {
		t.Fatalf("lastlog holds %d values for %d devices, want 5 and 5 after two compactions", q.logLen, len(q.dirty))
	}
	check := func(q *Queue) {
		t.Helper()
		for dev, seq := range want {
			got, mark, ok := q.Last(dev)
			wantMark := fmt.Sprintf("m%d", seq-1)
			if dev == "dev-3" {
				wantMark = ""
			}
			if !ok || got != seq || string(mark) != wantMark {
				t.Fatalf("Last(%s) = %d %q %v, want %d %q", dev, got, mark, ok, seq, wantMark)
			}
			if err := q.Append(dev, seq, nil); outcomeOf(err) != Replay {
				t.Fatalf("%s seq %d again: %v, want a replay", dev, seq, err)
			}
		}
	}
	check(q)
	q.Close()
	q = open(t, path, Options{NoSync: true})
	if q.logLen != 5 {
		t.Fatalf("reopened with %d lastlog values, want 5", q.logLen)
	}
	check(q)
	// A reopen with many lastlog values per device: the newest must win.
	for i := range 300 {
		dev := fmt.Sprintf("dev-%d", i%devices)
		if dev == "dev-3" {
			continue
		}
		want[dev]++
		if err := appendMarked(q, dev, want[dev], []byte(fmt.Sprintf("m%d", want[dev]-1)), nil); err != nil {
			t.Fatal(err)
		}
	}
	q.Close()
	q = open(t, path, Options{NoSync: true})
	if q.logLen < 250 {
		t.Fatalf("reopened with %d lastlog values, want over 250", q.logLen)
	}
	check(q)
	// A compaction right after the reopen writes the devices replayed
	// from lastlog too.
	for i := q.logLen; i < compactEvery; i++ {
		want["dev-0"]++
		if err := appendMarked(q, "dev-0", want["dev-0"], []byte(fmt.Sprintf("m%d", want["dev-0"]-1)), nil); err != nil {
			t.Fatal(err)
		}
	}
	if q.logLen != 0 {
		t.Fatalf("no compaction: %d lastlog values", q.logLen)
	}
	q.Close()
	q = open(t, path, Options{NoSync: true})
	if q.logLen != 0 {
		t.Fatalf("reopened with %d lastlog values, want 0", q.logLen)
	}
	check(q)
}

func TestEmptyDeviceRefused(t *testing.T) {
	q := open(t, filepath.Join(t.TempDir(), "q.db"), Options{NoSync: true})
	if err := q.Append("", 1, nil); err == nil {
		t.Fatal("empty device ID accepted")
	}
	if err := q.Append(strings.Repeat("d", maxDevLen+1), 1, nil); err == nil {
		t.Fatal("over-long device ID accepted")
	}
	if err := q.Append("d", 1, nil); err != nil {
		t.Fatal(err)
	}
}

// A lone appender commits at once however long the commit delay: only
// requests arriving concurrently wait for company. With a delay of an hour,
// a wait would hang the test.
func TestLoneAppenderNotDelayed(t *testing.T) {
	var calls, requests int // written by the committer, read after its answers
	var mu sync.Mutex
	q := open(t, filepath.Join(t.TempDir(), "q.db"), Options{NoSync: true, CommitDelay: time.Hour,
		OnCommit: func(n int, took time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			calls++
			requests += n
			if took <= 0 {
				t.Errorf("commit took %v", took)
			}
		}})
	for seq := uint64(1); seq <= 50; seq++ {
		if err := q.Append("dev", seq, []byte("x")); err != nil {
			t.Fatal(err)
		}
		if seq%10 == 0 {
			es := all(t, q)
			if err := q.Remove(es[0].Key); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := q.Commits(); got != 55 {
		t.Fatalf("%d commits for 50 appends and 5 removals, want one each", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls != 55 || requests != 55 {
		t.Fatalf("OnCommit saw %d commits of %d requests, want 55 of 55", calls, requests)
	}
}

// gather takes the requests already waiting; with a deadline, also those
// that arrive before it, up to the batch bound; it stops when the channel
// closes.
func TestGather(t *testing.T) {
	q := &Queue{reqs: make(chan *request), maxBatch: 4}
	first := &request{seq: 1}
	if got := q.gather([]*request{first}, nil); len(got) != 1 {
		t.Fatalf("nothing waiting: batch of %d, want 1", len(got))
	}

	until := make(chan time.Time)
	got := make(chan []*request)
	go func() { got <- q.gather([]*request{first}, until) }()
	q.reqs <- &request{seq: 2} // unbuffered: received by gather
	q.reqs <- &request{seq: 3}
	until <- time.Now()
	if b := <-got; len(b) != 3 || b[1].seq != 2 || b[2].seq != 3 {
		t.Fatalf("deadline: batch of %d, want the 3 requests in order", len(b))
	}

	go func() { got <- q.gather([]*request{first}, until) }()
	for seq := uint64(2); seq <= 4; seq++ {
		q.reqs <- &request{seq: seq}
	}
	if b := <-got; len(b) != 4 { // full: returns without the deadline
		t.Fatalf("full: batch of %d, want 4", len(b))
	}

	go func() { got <- q.gather([]*request{first}, until) }()
	q.reqs <- &request{seq: 2}
	close(q.reqs)
	if b := <-got; len(b) != 2 {
		t.Fatalf("closed: batch of %d, want 2", len(b))
	}
}
