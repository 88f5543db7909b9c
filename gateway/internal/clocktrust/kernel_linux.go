package clocktrust

import "golang.org/x/sys/unix"

// KernelSynced asks the kernel whether an NTP client keeps the system clock
// synchronised: adjtimex(2) read-only (no privilege needed) returns a clock
// state other than TIME_ERROR and the status lacks STA_UNSYNC.
func KernelSynced() (bool, error) {
	var t unix.Timex
	state, err := unix.Adjtimex(&t)
	if err != nil {
		return false, err
	}
	return state != unix.TIME_ERROR && t.Status&unix.STA_UNSYNC == 0, nil
}
