package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat
// (100 on every Linux architecture Go supports).
const clockTicks = 100

// Proc is what /proc says of one process.
type Proc struct {
	RSS int64         // VmRSS, bytes
	CPU time.Duration // user + system time so far
}

// ProcStat reads VmRSS from /proc/PID/status and the CPU time from
// /proc/PID/stat; pid 0 is this process.
func ProcStat(pid int) (Proc, error) {
	dir := "/proc/self"
	if pid > 0 {
		dir = "/proc/" + strconv.Itoa(pid)
	}
	var p Proc
	st, err := os.ReadFile(dir + "/status")
	if err != nil {
		return p, fmt.Errorf("read process status: %w", err)
	}
	if p.RSS, err = parseVmRSS(st); err != nil {
		return p, err
	}
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return p, fmt.Errorf("read process stat: %w", err)
	}
	p.CPU, err = parseCPU(stat)
	return p, err
}

// parseVmRSS finds "VmRSS:   1234 kB".
func parseVmRSS(status []byte) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "VmRSS:") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			break
		}
		kb, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmRSS %q: %w", line, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("no VmRSS in process status")
}

// parseCPU reads utime and stime (fields 14 and 15) of /proc/PID/stat; the
// command name (field 2) may hold spaces, so fields count from its ')'.
func parseCPU(stat []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("process stat: no command field")
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 { // f[0] is field 3 (state); utime is field 14 = f[11]
		return 0, fmt.Errorf("process stat: %d fields", len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	stt, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("process stat: utime %q stime %q", f[11], f[12])
	}
	return time.Duration(ut+stt) * time.Second / clockTicks, nil
}

// RaiseFileLimit sets the soft limit of open files to the hard limit (10,000
// connections need more than the usual 1024) and returns the new limit.
// Child processes inherit it.
func RaiseFileLimit() (uint64, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, fmt.Errorf("get open file limit: %w", err)
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			return 0, fmt.Errorf("raise open file limit: %w", err)
		}
	}
	return l.Cur, nil
}

// CPUModel is the "model name" of /proc/cpuinfo, or "".
func CPUModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
