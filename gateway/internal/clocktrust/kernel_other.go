//go:build !linux

package clocktrust

import "errors"

// KernelSynced: only Linux's adjtimex(2) is asked; elsewhere the state is
// unknown, and the clock is judged by its floor alone.
func KernelSynced() (bool, error) {
	return false, errors.New("the kernel's clock synchronisation state is read on Linux only")
}
