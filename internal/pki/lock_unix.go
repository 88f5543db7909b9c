//go:build unix

package pki

import (
	"os"
	"path/filepath"
	"syscall"

	"github.com/vitalgate/vitalgate/internal/fileerr"
)

// LockDir takes the PKI directory's writer lock (flock on DIR/.lock, exclusive, waiting for it) and returns
// its release. Every writer of a file that two programs may change at once (the issuing CA's revocation list
// and the register of issued certificates, written by the gateway and by certs) holds it while it reads,
// changes and replaces the file, so neither update is lost.
func LockDir(dir string) (release func(), err error) {
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fileerr.Wrap("lock PKI directory", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fileerr.Wrap("lock PKI directory", path, err)
	}
	return func() { f.Close() }, nil // closing the descriptor releases the lock
}
