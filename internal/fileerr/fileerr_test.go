package fileerr

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestWrapNamesThePathOnce(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.crt")
	_, err := os.ReadFile(missing)
	got := Wrap("read certificate", missing, err)
	if want := "read certificate " + missing + ": no such file or directory"; got.Error() != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	var pe *fs.PathError
	if !errors.Is(got, fs.ErrNotExist) || !errors.As(got, &pe) {
		t.Fatalf("%v: the os error is not seen through the wrapper", got)
	}
	// An error about another file, or not about a file, is kept whole.
	other := Wrap("load key pair", filepath.Join(dir, "a.crt"), &fs.PathError{Op: "open", Path: "b.key", Err: fs.ErrPermission})
	if want := "load key pair " + filepath.Join(dir, "a.crt") + ": open b.key: permission denied"; other.Error() != want {
		t.Fatalf("got %q, want %q", other, want)
	}
	if Wrap("x", "y", nil) != nil {
		t.Fatal("Wrap of nil is not nil")
	}
}
