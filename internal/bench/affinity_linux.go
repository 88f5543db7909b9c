package bench

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

func (s CPUSet) unix() *unix.CPUSet {
	var u unix.CPUSet
	for _, c := range s {
		u.Set(c)
	}
	return &u
}

// startPinned starts cmd with its CPU affinity set to cpus (none: not
// pinned). The child inherits the affinity of the thread that forks it, so
// the fork happens on a locked thread pinned for the purpose and given its
// mask back after; the Go runtime starts no threads from a locked thread,
// so the mask leaks nowhere else (and a thread that cannot get its mask
// back stays locked, which ends it with its goroutine). A Go child sizes
// GOMAXPROCS to the set.
func startPinned(cmd *exec.Cmd, cpus CPUSet) error {
	if len(cpus) == 0 {
		return cmd.Start()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		var old unix.CPUSet
		if err := unix.SchedGetaffinity(0, &old); err != nil {
			errc <- fmt.Errorf("read CPU affinity: %w", err)
			return
		}
		if err := unix.SchedSetaffinity(0, cpus.unix()); err != nil {
			errc <- fmt.Errorf("pin to CPUs %s: %w", cpus, err)
			return
		}
		errc <- cmd.Start()
		if unix.SchedSetaffinity(0, &old) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return <-errc
}

// PinSelf sets the CPU affinity of every thread of this process to cpus;
// threads started later inherit it from the thread that starts them. An
// empty set does nothing.
func PinSelf(cpus CPUSet) error {
	if len(cpus) == 0 {
		return nil
	}
	set := cpus.unix()
	// Twice: a thread started while the first pass ran may have copied the old mask.
	for range 2 {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("pin to CPUs %s: %w", cpus, err)
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			if err := unix.SchedSetaffinity(tid, set); err != nil && err != unix.ESRCH {
				return fmt.Errorf("pin thread %d to CPUs %s: %w", tid, cpus, err)
			}
		}
	}
	return nil
}

// AllowedCPUs is the CPU affinity of the calling thread (the CPUs this
// process may use, unless something pinned threads of it), or nil when
// it cannot be read.
func AllowedCPUs() CPUSet {
	var u unix.CPUSet
	if err := unix.SchedGetaffinity(0, &u); err != nil {
		return nil
	}
	var s CPUSet
	for c := range 1024 { // CPU_SETSIZE
		if u.IsSet(c) {
			s = append(s, c)
		}
	}
	return s
}
