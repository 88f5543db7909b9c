package bench

import (
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
)

func TestParseCPUs(t *testing.T) {
	allowed := CPUSet{0, 1, 2, 3}
	for _, c := range []struct {
		in, want string
	}{{"0", "0"}, {"1-3", "1-3"}, {"3,0,2", "0,2-3"}, {"0,0,1", "0-1"}, {"", ""}, {" 2 , 1 ", "1-2"}} {
		got, err := ParseCPUs(c.in, allowed)
		if err != nil || got.String() != c.want {
			t.Errorf("ParseCPUs(%q) = %v, %v; want %s", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"x", "1-", "3-1", "-1", "4", "0-4", "1,,2"} {
		if s, err := ParseCPUs(bad, allowed); err == nil {
			t.Errorf("ParseCPUs(%q) = %v, want an error", bad, s)
		}
	}
	if g, h := DefaultCPUs(CPUSet{0, 1}); g.String() != "0" || h.String() != "1" {
		t.Errorf("DefaultCPUs(0-1) = %s, %s", g, h)
	}
	if g, h := DefaultCPUs(CPUSet{0}); g != nil || h != nil {
		t.Errorf("DefaultCPUs(0) = %s, %s; want no pinning", g, h)
	}
	if !(CPUSet{0, 2}).Overlaps(CPUSet{2}) || (CPUSet{0}).Overlaps(CPUSet{1, 2}) || (CPUSet{0}).Overlaps(nil) {
		t.Error("Overlaps is wrong")
	}
}

// TestStartPinned starts a child on one CPU and reads its allowed CPUs from
// /proc; this process keeps its own.
func TestStartPinned(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("pinning needs Linux")
	}
	before := AllowedCPUs()
	if len(before) == 0 {
		t.Fatal("no allowed CPUs")
	}
	cpu := before[len(before)-1]
	cmd := exec.Command("sh", "-c", "grep Cpus_allowed_list /proc/self/status")
	var out strings.Builder
	cmd.Stdout = &out
	if err := startPinned(cmd, CPUSet{cpu}); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out.String()), "Cpus_allowed_list:")); got != (CPUSet{cpu}).String() {
		t.Errorf("child's CPUs %q, want %d", got, cpu)
	}
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	if len(before) > 1 && !strings.Contains(string(st), "Cpus_allowed_list:\t"+before.String()) {
		t.Errorf("this process's CPUs changed: %s", st)
	}
}

func TestSummarize(t *testing.T) {
	a := Result{Validated: 100, VerifyOnly: 200, Ratio: 0.5, P99: 30, Undelivered: 0, Devices: 10, GatewayCPUs: "0", ElapsedSeconds: 10}
	b := Result{Validated: 300, VerifyOnly: 400, Ratio: 0.75, P99: 10, Undelivered: 3, Devices: 10, GatewayCPUs: "0", ElapsedSeconds: 10}
	c := Result{Validated: 200, VerifyOnly: 300, Ratio: 0.6, P99: 20, Undelivered: 0, Devices: 10, GatewayCPUs: "0", ElapsedSeconds: 10}
	s := Summarize([]Result{a, b, c})
	if s.Validated != 200 || s.VerifyOnly != 300 || s.Ratio != 0.6 || s.P99 != 20 || s.Devices != 10 {
		t.Errorf("medians: %+v", s)
	}
	if s.RatioMin != 0.5 || s.RatioMax != 0.75 || s.ValidatedMin != 100 || s.ValidatedMax != 300 || s.P99Min != 10 || s.P99Max != 30 {
		t.Errorf("spreads: %+v", s.Spread)
	}
	if s.Undelivered != 3 || s.Runs != 3 || s.ElapsedSeconds != 30 || s.GatewayCPUs != "0" {
		t.Errorf("undelivered %d (the worst run), runs %d, elapsed %v, cpus %q", s.Undelivered, s.Runs, s.ElapsedSeconds, s.GatewayCPUs)
	}
	if s := Summarize([]Result{a, b}); s.Validated != 200 || s.RatioMin != 0.5 {
		t.Errorf("even count: %+v", s)
	}
	if s := Summarize([]Result{a}); s.Runs != 1 || s.RatioMin != 0.5 || s.RatioMax != 0.5 {
		t.Errorf("one run: %+v", s)
	}
}
