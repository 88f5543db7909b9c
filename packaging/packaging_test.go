// Package packaging holds what installs VitalGate on a box: the systemd
// units (systemd/) and the container image (Dockerfile). Its tests check
// them: the sandboxing every unit must keep, systemd's own verification
// and exposure figure where systemd-analyze is installed.
package packaging

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// units are the services, by the program each runs.
var units = map[string]string{"vitalgate-gateway.service": "vitalgate-gateway", "vitalgate-broker.service": "vitalgate-broker"}

// needTool skips a test without the tool, or fails it when CI said it
// installed the tools (VITALGATE_CI=1).
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("VITALGATE_CI") == "1" {
		t.Fatalf("%s not found, and VITALGATE_CI=1: CI must install it (.ci/run)", name)
	}
	t.Skipf("%s not installed: the units are not verified by systemd (install systemd)", name)
	return ""
}

// TestUnitsSandboxed: every unit keeps the sandbox the docs promise.
func TestUnitsSandboxed(t *testing.T) {
	must := []string{
		"User=vitalgate", "StateDirectory=", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
		"NoNewPrivileges=yes", "CapabilityBoundingSet=\n", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
		"SystemCallFilter=@system-service\n", "MemoryMax=", "ExecReload=kill -HUP $MAINPID", "UMask=0077",
	}
	for unit, bin := range units {
		b, err := os.ReadFile(filepath.Join("systemd", unit))
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		for _, m := range must {
			if !strings.Contains(s, "\n"+m) {
				t.Errorf("%s lacks %q", unit, strings.TrimSpace(m))
			}
		}
		if !strings.Contains(s, "\nExecStart=/usr/local/bin/"+bin+" --config /etc/vitalgate/") {
			t.Errorf("%s does not start /usr/local/bin/%s with its configuration", unit, bin)
		}
	}
}

// TestUnitsVerify runs systemd-analyze verify and the offline security
// analysis on each unit, in a root directory holding the system's units and
// stand-ins for the programs (the units name installed paths).
func TestUnitsVerify(t *testing.T) {
	sa := needTool(t, "systemd-analyze")
	root := t.TempDir()
	sys := ""
	for _, d := range []string{"/usr/lib/systemd/system", "/lib/systemd/system"} {
		if _, err := os.Stat(filepath.Join(d, "sysinit.target")); err == nil {
			sys = d
			break
		}
	}
	if sys == "" {
		t.Fatal("systemd-analyze is installed but sysinit.target is nowhere: no system units to verify against")
	}
	copyDir(t, sys, filepath.Join(root, "usr/lib/systemd/system"))
	for _, p := range []string{"usr/bin/kill", "usr/local/bin/vitalgate-gateway", "usr/local/bin/vitalgate-broker"} {
		write(t, filepath.Join(root, p), []byte("#!/bin/sh\n"), 0o755)
	}
	exposure := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)
	for unit := range units {
		b, err := os.ReadFile(filepath.Join("systemd", unit))
		if err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(root, "etc/systemd/system", unit), b, 0o644)
		path := "/etc/systemd/system/" + unit
		out, err := exec.Command(sa, "verify", "--root="+root, path).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
		}
		out, err = exec.Command(sa, "security", "--offline=true", "--root="+root, "--no-pager", path).CombinedOutput()
		m := exposure.FindSubmatch(out)
		if err != nil || m == nil {
			t.Errorf("systemd-analyze security %s: %v\n%s", unit, err, out)
			continue
		}
		// docs/operations.md gives the figure: a unit that loosens its
		// sandbox must say so there.
		if f, _ := strconv.ParseFloat(string(m[1]), 64); f > 2.0 {
			t.Errorf("%s: exposure %s, over 2.0 (the docs say under 2)", unit, m[1])
		}
		t.Logf("%s: exposure %s", unit, m[1])
	}
}

func write(t *testing.T, path string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, mode); err != nil {
		t.Fatal(err)
	}
}

// copyDir copies the regular files and symbolic links of a unit directory
// (symbolic links as they are: systemd resolves them inside the root).
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(dst, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, dst)
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(dst, b, 0o644)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("copy %s: %v", from, err)
	}
}
