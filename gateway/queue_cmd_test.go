package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vitalgate/vitalgate/gateway/internal/server"
	"github.com/vitalgate/vitalgate/gateway/internal/spool"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// writeQueue writes a closed queue of a few hundred KiB with device d-1 at
// seq 5.
func writeQueue(t *testing.T, data string) string {
	t.Helper()
	path := filepath.Join(data, server.QueueFile)
	q, err := spool.Open(path, spool.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		if err := q.Append("filler", uint64(i+1), make([]byte, 300)); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Append("d-1", 5, nil); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestDamagedQueueExit: the gateway binary on a damaged or lost queue exits
// 1 with one line, no runtime crash (it was a SIGSEGV, a panic, or a silent
// start).
func TestDamagedQueueExit(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		damage func(path string) error
		want   string
	}{
		{"cut to 64 KiB", func(p string) error { return os.Truncate(p, 64<<10) }, "queue corrupt"},
		{"data pages overwritten", func(p string) error {
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteAt(bytes.Repeat([]byte{0xa5}, 8192), 3*4096)
			return err
		}, "queue corrupt"},
		{"cut to 0 bytes", func(p string) error { return os.Truncate(p, 0) }, "queue lost"},
		{"deleted", os.Remove, "queue lost"},
	} {
		t.Run(c.name, func(t *testing.T) {
			data := t.TempDir()
			if err := c.damage(writeQueue(t, data)); err != nil {
				t.Fatal(err)
			}
			code, _, stderr := runMain(t, "--pki", dir, "--data", data, "--listen", "127.0.0.1:0", "--http", "", "--https", "")
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			last := lines[len(lines)-1]
			if code != 1 || !strings.HasPrefix(last, "gateway: open queue: "+c.want) || strings.Contains(stderr, "panic") || strings.Contains(stderr, "SIG") {
				t.Fatalf("exit %d, stderr:\n%s\nwant exit 1 and a last line \"gateway: open queue: %s ...\"", code, stderr, c.want)
			}
		})
	}
}

// TestReplayResetCommand: `gateway replay reset` forgets one device's last
// seq, with an audit event; it refuses while a gateway holds the queue.
func TestReplayResetCommand(t *testing.T) {
	data := t.TempDir()
	path := writeQueue(t, data)
	var out bytes.Buffer
	if err := replayCmd([]string{"reset", "--data", data, "--id", "nobody"}, &out); err == nil || !strings.Contains(err.Error(), "nothing reset") {
		t.Fatalf("unknown device: %v", err)
	}
	if err := replayCmd([]string{"reset", "--data", data, "--id", "../x"}, &out); err == nil || !strings.Contains(err.Error(), "not a device ID") {
		t.Fatalf("bad ID: %v", err)
	}
	if err := replayCmd([]string{"reset", "--data", t.TempDir(), "--id", "d-1"}, &out); err == nil || !strings.Contains(err.Error(), "no queue") {
		t.Fatalf("no queue: %v", err)
	}
	// A running gateway holds the queue.
	q, err := spool.Open(path, spool.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	err = replayCmd([]string{"reset", "--data", data, "--id", "d-1"}, &out)
	q.Close()
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("queue held by another: %v", err)
	}
	if err := replayCmd([]string{"reset", "--data", data, "--id", "d-1", "--pki", t.TempDir()}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "last accepted seq 5 forgotten") {
		t.Fatalf("output %q", out.String())
	}
	q, err = spool.Open(path, spool.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, ok := q.LastSeq("d-1"); ok {
		t.Fatal("d-1 still has a last seq")
	}
	if s, ok := q.LastSeq("filler"); !ok || s != 1000 {
		t.Fatalf("other device: %d %v", s, ok)
	}
	raw, _ := os.ReadFile(filepath.Join(data, server.AuditFile))
	if !strings.Contains(string(raw), `"replay_reset"`) || !strings.Contains(string(raw), `"d-1"`) {
		t.Fatalf("audit log: %s", raw)
	}
}
