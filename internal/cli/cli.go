// Package cli holds what the project's commands share on their command line.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// ParseFlags parses args into fs. A bad flag is an error of one line, naming
// the flag and pointing at --help (docs/operations.md: a one-line reason),
// instead of the whole usage; --help prints the usage to out and returns
// [flag.ErrHelp].
func ParseFlags(fs *flag.FlagSet, args []string, out io.Writer) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(out)
		fs.Usage()
		return err
	case err != nil:
		return fmt.Errorf("%w (see %s --help)", err, fs.Name())
	}
	return nil
}
