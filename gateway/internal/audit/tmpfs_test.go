package audit

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// smallDisk mounts a tmpfs of size bytes in a temporary directory and
// returns it; it skips the test where mounting is not possible (not root,
// no CAP_SYS_ADMIN, no tmpfs).
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fill writes a file into dir until the disk is full and returns its path.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for range 1 << 16 { // bounded: 256 MiB at most
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return path
			}
			t.Fatal(err)
		}
	}
	t.Fatal("the disk did not fill")
	return ""
}

// The same recovery on a real full filesystem: ENOSPC while the disk is
// full, the log writing again (with a gap record) once space is freed.
func TestFullDiskRecovers(t *testing.T) {
	dir := smallDisk(t, "64k")
	path := filepath.Join(dir, "audit.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	appendN(t, l, 1, 2)
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	filler := fill(t, dir)
	appendN(t, l, 3, 20)
	if err := l.Sync(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Sync on a full disk = %v, want ENOSPC", err)
	}
	if !errors.Is(l.Err(), syscall.ENOSPC) {
		t.Fatalf("Err = %v, want ENOSPC", l.Err())
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 23, 1)
	if err := l.Sync(); err != nil {
		t.Fatalf("Sync after space was freed: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	r := checkLog(t, path)
	if r.Entries != 4 || len(r.Gaps) != 1 || r.Gaps[0].Events != 20 || !strings.Contains(r.Gaps[0].Detail, "no space left on device") {
		t.Fatalf("%+v, want 2 entries, a gap record for 20 events, and the new one", r)
	}
}
