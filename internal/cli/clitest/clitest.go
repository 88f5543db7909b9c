// Package clitest runs a command's real main from its own test binary, so
// tests see its exit status, stdout and stderr as a user would.
package clitest

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Main is a package's TestMain: with the environment variable env set to
// "1" the test binary runs main instead of the tests.
func Main(m *testing.M, env string, main func()) {
	if os.Getenv(env) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// Run runs the test binary as the command (see [Main]) with args and returns
// its exit status, stdout and stderr.
func Run(t *testing.T, env string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	// atexit_sleep_ms: the race runtime otherwise sleeps a second at every successful exit.
	cmd.Env = append(os.Environ(), env+"=1", "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errOut.String()
}
