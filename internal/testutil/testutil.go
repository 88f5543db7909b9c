// Package testutil holds what the project's tests share: polling for a
// condition with a deadline instead of sleeping for a result.
package testutil

import (
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
