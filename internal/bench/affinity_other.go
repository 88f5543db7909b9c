//go:build !linux

package bench

import (
	"errors"
	"os/exec"
)

var errNoAffinity = errors.New("pinning to CPUs needs Linux")

func startPinned(cmd *exec.Cmd, cpus CPUSet) error {
	if len(cpus) > 0 {
		return errNoAffinity
	}
	return cmd.Start()
}

// PinSelf needs Linux; an empty set does nothing.
func PinSelf(cpus CPUSet) error {
	if len(cpus) > 0 {
		return errNoAffinity
	}
	return nil
}

// AllowedCPUs is nil: affinity is not known here.
func AllowedCPUs() CPUSet { return nil }
