package audit

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/testutil"
)

// fullFile is the log's file on a disk that can fill up: while full is set,
// a write keeps at most 10 bytes (a partial line) and fails with ENOSPC,
// and failSync makes the next fsync fail with EIO.
type fullFile struct {
	*os.File
	full, failSync atomic.Bool
}

func (f *fullFile) Write(b []byte) (int, error) {
	if !f.full.Load() {
		return f.File.Write(b)
	}
	n, _ := f.File.Write(b[:min(len(b), 10)])
	return n, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
}

func (f *fullFile) Sync() error {
	if f.failSync.CompareAndSwap(true, false) {
		return &os.PathError{Op: "sync", Path: f.Name(), Err: syscall.EIO}
	}
	return f.File.Sync()
}

func openFull(t *testing.T) (*Log, *fullFile, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	var ff *fullFile
	l, err := open(path, func(f *os.File) file { ff = &fullFile{File: f}; return ff })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, ff, path
}

func appendN(t *testing.T, l *Log, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		if err := l.Append(ev(i)); err != nil {
			t.Fatal(err)
		}
	}
}

// checkLog checks the chain and returns its report.
func checkLog(t *testing.T, path string) Report {
	t.Helper()
	r, err := Check(path)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	return r
}

// A full disk stops the log only while it is full: the failed events are
// cut off the file (no partial line), counted, reported by Err, and
// recorded as a gap by the first entry written once there is room again.
// Before, the first ENOSPC was sticky: every later event failed with it
// until a restart, and the log said nothing of the loss.
func TestWriteErrorsRecover(t *testing.T) {
	l, ff, path := openFull(t)
	appendN(t, l, 1, 3)
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	ff.full.Store(true)
	appendN(t, l, 4, 5)
	if err := l.Sync(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Sync on a full disk = %v, want ENOSPC", err)
	}
	if !errors.Is(l.Err(), syscall.ENOSPC) || l.WriteErrors() == 0 || l.Lost() != 5 {
		t.Fatalf("Err %v, WriteErrors %d, Lost %d; want ENOSPC, > 0, 5", l.Err(), l.WriteErrors(), l.Lost())
	}
	if r := checkLog(t, path); r.Entries != 3 || len(r.Gaps) != 0 {
		t.Fatalf("on the full disk: %+v, want the 3 synced entries and no partial line", r)
	}

	ff.full.Store(false)
	appendN(t, l, 9, 1)
	if err := l.Sync(); err != nil {
		t.Fatalf("Sync with room again: %v", err)
	}
	if l.Err() != nil {
		t.Fatalf("Err after a successful write: %v", l.Err())
	}
	r := checkLog(t, path)
	if r.Entries != 5 || len(r.Gaps) != 1 || r.Gaps[0].Line != 4 || r.Gaps[0].Events != 5 || r.Missing != 5 {
		t.Fatalf("after recovery: %+v, want 3 entries, the gap record at line 4 for 5 events, then the new one", r)
	}
	if d := r.Gaps[0].Detail; !strings.Contains(d, "5 events lost (writes failing since ") || !strings.Contains(d, "no space left on device") {
		t.Fatalf("gap detail %q", d)
	}
	if ls := lines(t, path); !strings.Contains(string(ls[4]), `"dev":"dev-9"`) {
		t.Fatalf("last entry is not the event written after recovery: %s", ls[4])
	}
}

// With no new event, the writer retries on its own, so the gap is recorded
// and Err clears soon after room comes back.
func TestWriteErrorsRetry(t *testing.T) {
	l, ff, path := openFull(t)
	ff.full.Store(true)
	appendN(t, l, 1, 2)
	if err := l.Sync(); err == nil {
		t.Fatal("Sync on a full disk succeeded")
	}
	ff.full.Store(false)
	if !testutil.Poll(10*time.Second, func() bool { return l.Err() == nil }) {
		t.Fatalf("still failing 10 s after room came back: %v", l.Err())
	}
	if r := checkLog(t, path); r.Entries != 1 || len(r.Gaps) != 1 || r.Gaps[0].Events != 2 {
		t.Fatalf("%+v, want only the gap record for 2 events", r)
	}
}

// A failed fsync loses what it covered (nothing says what reached the
// disk): the entries are cut off, and the chain goes on from the last
// synced entry. A drop record caught in it is written again, not lost.
func TestSyncErrorRecovers(t *testing.T) {
	l, ff, path := openFull(t)
	appendN(t, l, 1, 2)
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	l.dropped.Add(7) // as if Append had overflowed
	appendN(t, l, 3, 2)
	ff.failSync.Store(true)
	if err := l.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Sync = %v, want EIO", err)
	}
	appendN(t, l, 5, 1)
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	r := checkLog(t, path)
	// 2 synced, then the drop record (7) and the gap record (2 lost), then event 5.
	if r.Entries != 5 || len(r.Gaps) != 2 || r.Missing != 9 {
		t.Fatalf("%+v, want 5 entries with gaps for 7 dropped and 2 lost events", r)
	}
}
