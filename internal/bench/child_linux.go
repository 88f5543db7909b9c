package bench

import (
	"os/exec"
	"syscall"
)

// setParentDeath has the kernel kill the child if the harness dies first,
// so a killed or timed-out run leaves no gateway or broker behind.
func setParentDeath(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
