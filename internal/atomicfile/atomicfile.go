// Package atomicfile replaces a file's content all at once, so that a reader
// (or a crash) sees the old content or the new one, never a part of either:
// the state files of the gateway (enrolment bindings, published certificate
// chains, jobs, the inventory) and the files of the PKI directory and the
// update repository.
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"

	"github.com/vitalgate/vitalgate/internal/fileerr"
)

// Write replaces path with data through a temporary file in the same
// directory, created with perm (so the file never exists with another mode),
// written, synced to the disk when sync is set, and renamed into place. On an
// error the temporary file is removed, and the error reads "op path: cause".
func Write(op, path string, data []byte, perm os.FileMode, sync bool) error {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return fileerr.Wrap(op, path, err)
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fileerr.Wrap(op, path, err)
	}
	_, err = f.Write(data)
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fileerr.Wrap(op, path, err)
	}
	return nil
}
