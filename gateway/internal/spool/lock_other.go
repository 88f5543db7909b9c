//go:build !unix

package spool

// tryLock is a no-op where flock is not available: bbolt's own lock, taken
// when the file is opened, is then the only guard.
func tryLock(string) (func(), error) { return func() {}, nil }
