//go:build unix

package spool

import (
	"errors"
	"os"
	"syscall"
)

// tryLock takes, without waiting, the lock bbolt holds on an open queue
// file (flock, exclusive), and returns its release. It reports
// [ErrInUse] while another process, a running gateway, holds the file. A
// missing file is no error: nobody holds it.
func tryLock(path string) (release func(), err error) {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return func() {}, nil
	}
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, ErrInUse
		}
		return nil, err
	}
	return func() { f.Close() }, nil // closing the descriptor releases the lock
}
