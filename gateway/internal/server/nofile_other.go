//go:build !unix

package server

import "errors"

// nofileLimit: there is no RLIMIT_NOFILE to check max_connections against.
var nofileLimit = func() (uint64, error) {
	return 0, errors.New("no open-file limit on this system")
}
