// Package fileerr words the error of an operation on a file so that the
// message names the operation and the file once. The os package's errors
// already name both ("open /d/audit.log: is a directory"): wrapped as they
// are, a caller that names its own operation and the file repeats them
// ("open audit log: open /d/audit.log: ...").
package fileerr

import (
	"errors"
	"io/fs"
)

// Wrap returns err of op on path, worded "op path: cause". When err is an
// [fs.PathError] on path, cause is its inner error, so that the path and
// the system call's name are not repeated. [errors.Is] and [errors.As] see
// err unchanged. Wrap(op, path, nil) is nil.
func Wrap(op, path string, err error) error {
	if err == nil {
		return nil
	}
	return &pathError{op: op, path: path, err: err}
}

type pathError struct {
	op, path string
	err      error
}

func (e *pathError) Error() string {
	cause := e.err
	var pe *fs.PathError
	if errors.As(e.err, &pe) && pe.Path == e.path {
		cause = pe.Err
	}
	return e.op + " " + e.path + ": " + cause.Error()
}

func (e *pathError) Unwrap() error { return e.err }

// Cause is the innermost message of err ("no space left on device"),
// without the operations and paths its wrappers add: for a status line
// that names the file elsewhere.
func Cause(err error) string {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err.Error()
		}
		err = u
	}
}
