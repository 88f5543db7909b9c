package bench

import (
	"context"
	"os/exec"
	"strings"
	"testing"
)

// The started line's key=value pairs are parsed as slog's text handler
// writes them, quoted values included.
func TestChildFields(t *testing.T) {
	line := `time=2026-11-23T14:00:00Z level=INFO msg="cloud broker started" gateways=127.0.0.1:4242 apps=127.0.0.1:4343 ws="" note="a \"b\" c" http=""`
	c, err := startChild(context.Background(), "test", exec.Command("sh", "-c", "echo '"+line+"' >&2; exec sleep 30"), `msg="cloud broker started"`, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	for k, want := range map[string]string{"gateways": "127.0.0.1:4242", "apps": "127.0.0.1:4343", "ws": "", "http": "", "msg": "cloud broker started", "note": `a "b" c`} {
		if got := c.field(k); got != want {
			t.Errorf("field %s = %q, want %q", k, got, want)
		}
	}
}

// A child that dies at start is reported with the line that says why, every
// time (the log is read to its end before the exit is reported).
func TestChildExitAtStartKeepsItsLastWords(t *testing.T) {
	for range 20 {
		_, err := startChild(context.Background(), "test", exec.Command("sh", "-c", "echo 'fatal: no such PKI' >&2; exit 1"), `msg="never"`, nil)
		if err == nil || !strings.Contains(err.Error(), "fatal: no such PKI") {
			t.Fatalf("error %v, want the child's last log line in it", err)
		}
	}
}
