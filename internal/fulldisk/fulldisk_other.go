//go:build !linux

package fulldisk

import "testing"

// Mount skips the test: tmpfs is Linux's.
func Mount(t testing.TB, size string) string {
	t.Skip("a tmpfs needs Linux")
	return ""
}

// Fill fails the test; Mount has skipped it already.
func Fill(t testing.TB, dir string) string {
	t.Fatal("fulldisk.Fill needs Linux")
	return ""
}
