//go:build unix

package server

import "syscall"

// nofileLimit returns the process's limit of open files (the soft
// RLIMIT_NOFILE, which Go raises to the hard limit at start on Linux);
// tests replace it.
var nofileLimit = func() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	return uint64(rl.Cur), nil
}
