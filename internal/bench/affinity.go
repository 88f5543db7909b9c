package bench

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// CPUSet is a list of CPU numbers, sorted and without duplicates.
type CPUSet []int

// ParseCPUs reads a CPU list in the form taskset and /sys use: numbers and
// ranges separated by commas ("0", "1-3", "0,2-3"). Each CPU must be one
// of allowed (this process's, [AllowedCPUs]); "" is the empty set (no
// pinning).
func ParseCPUs(s string, allowed CPUSet) (CPUSet, error) {
	var set CPUSet
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return nil, fmt.Errorf("CPU list %q: %q is not a CPU number or range", s, part)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("CPU list %q: %q is not a range low-high", s, part)
			}
		}
		for c := a; c <= b; c++ {
			if !slices.Contains(allowed, c) {
				return nil, fmt.Errorf("CPU list %q: CPU %d is not one this process may use (%s)", s, c, allowed)
			}
			set = append(set, c)
		}
	}
	slices.Sort(set)
	return slices.Compact(set), nil
}

// String is the set in the form ParseCPUs reads, with ranges ("0,2-3").
func (s CPUSet) String() string {
	var b strings.Builder
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(s[i]))
		if j > i {
			b.WriteString("-" + strconv.Itoa(s[j]))
		}
		i = j + 1
	}
	return b.String()
}

// DefaultCPUs splits the allowed CPUs: the gateway on the first, the
// harness (fleet and app) and the cloud broker, which stands for another
// host, on the rest. With one CPU nothing is pinned.
func DefaultCPUs(allowed CPUSet) (gateway, harness CPUSet) {
	if len(allowed) < 2 {
		return nil, nil
	}
	return CPUSet{allowed[0]}, slices.Clone(allowed[1:])
}

// Overlaps says whether s and t share a CPU.
func (s CPUSet) Overlaps(t CPUSet) bool {
	for _, c := range s {
		if slices.Contains(t, c) {
			return true
		}
	}
	return false
}
