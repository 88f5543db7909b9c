//go:build !unix

package pki

import "sync"

var dirMu sync.Mutex

// LockDir serialises writers within this process only: there is no flock here.
func LockDir(dir string) (release func(), err error) {
	dirMu.Lock()
	return dirMu.Unlock, nil
}
