package audit

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vitalgate/vitalgate/internal/fulldisk"
)

// The same recovery on a real full filesystem: ENOSPC while the disk is
// full, the log writing again (with a gap record) once space is freed.
func TestFullDiskRecovers(t *testing.T) {
	dir := fulldisk.Mount(t, "64k")
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
	filler := fulldisk.Fill(t, dir)
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
