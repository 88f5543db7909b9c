// Package testutil holds what the project's tests share: polling for a
// condition with a deadline instead of sleeping for a result, and a buffer
// a logger and a test can share.
package testutil

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

// interval is the pause between two checks of a polled condition.
const interval = 10 * time.Millisecond

// Poll checks cond until it holds or timeout has passed, and reports whether
// it held. It checks at least once, and once more at the deadline.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if !time.Now().Before(deadline) {
			return cond()
		}
		time.Sleep(min(interval, time.Until(deadline)))
	}
	return true
}

// Eventually polls cond until it holds, failing the test with what (the
// awaited condition, such as "the device connected") once timeout has passed.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Poll(timeout, cond) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// SyncBuffer is a bytes.Buffer that a logger and a test may share: its
// methods are safe for concurrent use.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
