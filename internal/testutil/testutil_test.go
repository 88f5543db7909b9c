package testutil

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestPoll(t *testing.T) {
	var n atomic.Int32
	if !Poll(10*time.Second, func() bool { return n.Add(1) == 3 }) || n.Load() != 3 {
		t.Fatalf("condition true at the third check: Poll checked %d times", n.Load())
	}
	n.Store(0)
	if Poll(30*time.Millisecond, func() bool { n.Add(1); return false }) {
		t.Fatal("a condition that never holds reported as held")
	}
	if n.Load() < 2 {
		t.Fatalf("checked %d times, want at least one check and one at the deadline", n.Load())
	}
	if !Poll(0, func() bool { return true }) {
		t.Fatal("a condition already true with no time left")
	}
}

// fatalRecorder records a Fatalf instead of ending the test.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper()                        {}
func (f *fatalRecorder) Fatalf(format string, a ...any) { f.msg = fmt.Sprintf(format, a...) }

func TestEventually(t *testing.T) {
	r := &fatalRecorder{TB: t}
	Eventually(r, time.Second, "true", func() bool { return true })
	if r.msg != "" {
		t.Fatalf("a condition that holds failed the test: %q", r.msg)
	}
	Eventually(r, 20*time.Millisecond, "never", func() bool { return false })
	if !strings.Contains(r.msg, "waiting for never") {
		t.Fatalf("a condition that never holds: failure %q, want one naming it", r.msg)
	}
}
