package cli

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	newFS := func() (*flag.FlagSet, *int) {
		fs := flag.NewFlagSet("prog sub", flag.ContinueOnError)
		n := fs.Int("n", 1, "a number")
		return fs, n
	}
	var out bytes.Buffer
	fs, n := newFS()
	if err := ParseFlags(fs, []string{"-n", "7"}, &out); err != nil || *n != 7 || out.Len() != 0 {
		t.Fatalf("good flags: %v, n=%d, output %q", err, *n, out.String())
	}
	for _, args := range [][]string{{"--bogus"}, {"-n", "x"}, {"-n"}} {
		fs, _ := newFS()
		err := ParseFlags(fs, args, &out)
		if err == nil || strings.Contains(err.Error(), "\n") || !strings.HasSuffix(err.Error(), "(see prog sub --help)") || out.Len() != 0 {
			t.Errorf("%v: %q, output %q; want one line and no usage", args, err, out.String())
		}
	}
	fs, _ = newFS()
	if err := ParseFlags(fs, []string{"--help"}, &out); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "a number") {
		t.Fatalf("--help: %v, output %q", err, out.String())
	}
}
