package audit

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func ev(i int) Event {
	return Event{V: 1, TS: 1700000000000 + int64(i), GW: "gw1", Dev: fmt.Sprintf("dev-%d", i),
		Verdict: "bad_signature", Detail: fmt.Sprintf("event %d <&> \"quoted\" é", i), Remote: "127.0.0.1:5000"}
}

// writeLog writes n events and returns the path and its lines.
func writeLog(t *testing.T, n int) (string, [][]byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		if err := l.Append(ev(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path, lines(t, path)
}

func lines(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.SplitAfter(b, []byte("\n"))[:bytes.Count(b, []byte("\n"))]
}

func write(t *testing.T, path string, ls [][]byte) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Join(ls, nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestFormat(t *testing.T) {
	path, ls := writeLog(t, 2)
	if len(ls) != 2 {
		t.Fatalf("%d lines", len(ls))
	}
	want := `{"n":1,"prev":"` + Anchor + `","hash":"`
	if !bytes.HasPrefix(ls[0], []byte(want)) {
		t.Fatalf("first line %s", ls[0])
	}
	if !bytes.Contains(ls[0], []byte(`"event":{"v":1,"ts":1700000000001,"gw":"gw1","dev":"dev-1","verdict":"bad_signature","detail":"event 1 \u003c\u0026\u003e \"quoted\" é","remote":"127.0.0.1:5000"}}`)) {
		t.Fatalf("first line %s", ls[0])
	}
	if n, err := Verify(path); n != 2 || err != nil {
		t.Fatalf("Verify = %d, %v", n, err)
	}
}

// TestHandCheck runs the shell recipe of the package doc.
func TestHandCheck(t *testing.T) {
	if _, err := exec.LookPath("sha256sum"); err != nil {
		t.Skip("no sha256sum")
	}
	path, ls := writeLog(t, 5)
	script := `line=$(sed -n 5p "$1")
prev=$(printf '%s' "$line" | sed 's/^{"n":[0-9]*,"prev":"\([0-9a-f]*\)".*/\1/')
event=$(printf '%s' "$line" | sed 's/^.*"event"://; s/}$//')
printf '%s{"n":5,"event":%s}' "$prev" "$event" | sha256sum`
	out, err := exec.Command("sh", "-c", script, "sh", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(string(out))[0]
	if !bytes.Contains(ls[4], []byte(`"hash":"`+got+`"`)) {
		t.Fatalf("hand-computed hash %s not in line %s", got, ls[4])
	}
	if !bytes.Contains(ls[4], []byte(`"prev":"`+string(ls[3][bytes.Index(ls[3], []byte(`"hash":"`))+8:][:64])+`"`)) {
		t.Fatalf("line 5 prev is not line 4 hash")
	}
}

func TestTamper(t *testing.T) {
	const total = 10
	cases := []struct {
		name     string
		tamper   func(ls [][]byte) [][]byte
		line     int // first bad line
		reason   string
		verified int
	}{
		{"edited", func(ls [][]byte) [][]byte {
			ls[4] = bytes.Replace(ls[4], []byte("event 5"), []byte("event X"), 1)
			return ls
		}, 5, "edited", 4},
		{"edited whitespace", func(ls [][]byte) [][]byte {
			ls[4] = bytes.Replace(ls[4], []byte(`"gw":`), []byte(`"gw": `), 1)
			return ls
		}, 5, "canonical", 4},
		{"edited with recomputed hash", func(ls [][]byte) [][]byte {
			var prev string
			fmt.Sscanf(string(ls[4][bytes.Index(ls[4], []byte(`"prev":"`))+8:]), "%64s", &prev)
			e := ev(5)
			e.Verdict = "accepted"
			line, _, _ := encodeLine(5, prev, e)
			ls[4] = line
			return ls
		}, 6, "prev does not match the hash of line 5", 5},
		{"removed", func(ls [][]byte) [][]byte {
			return append(ls[:4:4], ls[5:]...)
		}, 5, "removed", 4},
		{"removed first", func(ls [][]byte) [][]byte { return ls[1:] }, 1, "entry number 2", 0},
		{"reordered", func(ls [][]byte) [][]byte {
			ls[3], ls[4] = ls[4], ls[3]
			return ls
		}, 4, "reordered", 3},
		{"inserted copy", func(ls [][]byte) [][]byte {
			out := append([][]byte{}, ls[:3]...)
			out = append(out, ls[2])
			return append(out, ls[3:]...)
		}, 4, "inserted", 3},
		{"inserted forged", func(ls [][]byte) [][]byte {
			line, _, _ := encodeLine(4, Anchor, ev(99))
			out := append([][]byte{}, ls[:3]...)
			out = append(out, line)
			return append(out, ls[3:]...)
		}, 4, "prev does not match the hash of line 3", 3},
		{"truncated tail", func(ls [][]byte) [][]byte {
			ls[9] = ls[9][:len(ls[9])/2]
			return ls
		}, 10, "truncated", 9},
		{"garbage", func(ls [][]byte) [][]byte {
			ls[6] = []byte("hello\n")
			return ls
		}, 7, "not a valid entry", 6},
		{"blank line", func(ls [][]byte) [][]byte {
			out := append([][]byte{}, ls[:2]...)
			out = append(out, []byte("\n"))
			return append(out, ls[2:]...)
		}, 3, "not a valid entry", 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path, ls := writeLog(t, total)
			write(t, path, c.tamper(ls))
			n, err := Verify(path)
			var le *LineError
			if !errors.As(err, &le) {
				t.Fatalf("Verify = %d, %v; want a LineError", n, err)
			}
			if le.Line != c.line || !strings.Contains(err.Error(), c.reason) || n != c.verified {
				t.Fatalf("Verify = %d, %v; want line %d (%s), %d verified", n, err, c.line, c.reason, c.verified)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("line %d:", c.line)) {
				t.Fatalf("error %q does not name line %d", err, c.line)
			}
		})
	}
}

func TestResume(t *testing.T) {
	path, _ := writeLog(t, 3)
	for round := range 3 {
		l, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 4 {
			if err := l.Append(ev(100*round + i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Sync(); err != nil {
			t.Fatal(err)
		}
		if n, err := Verify(path); n != 3+4*(round+1) || err != nil {
			t.Fatalf("after Sync in round %d: Verify = %d, %v", round, n, err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if err := l.Append(ev(0)); !errors.Is(err, ErrClosed) {
			t.Fatalf("Append after Close = %v", err)
		}
	}
	if n, err := Verify(path); n != 15 || err != nil {
		t.Fatalf("Verify = %d, %v", n, err)
	}
}

func TestOpenRefusesBrokenTail(t *testing.T) {
	path, ls := writeLog(t, 3)
	cases := map[string][][]byte{
		"truncated": append(ls[:2:2], ls[2][:20]),
		"edited":    append(ls[:2:2], bytes.Replace(ls[2], []byte("event 3"), []byte("event 4"), 1)),
		"garbage":   append(ls[:3:3], []byte("{}\n")),
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			write(t, path, content)
			l, err := Open(path)
			if err == nil {
				l.Close()
				t.Fatal("Open accepted a broken last line")
			}
			if !strings.Contains(err.Error(), "refusing to append") {
				t.Fatalf("unclear error: %v", err)
			}
			if b, _ := os.ReadFile(path); !bytes.Equal(b, bytes.Join(content, nil)) {
				t.Fatal("Open changed the broken file")
			}
		})
	}
	// A long last line (more than one read chunk) resumes fine.
	path2 := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path2)
	if err != nil {
		t.Fatal(err)
	}
	e := ev(1)
	e.Detail = strings.Repeat("x", 10000)
	l.Append(ev(0))
	l.Append(e)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if l, err = Open(path2); err != nil {
		t.Fatal(err)
	}
	l.Append(ev(2))
	l.Close()
	if n, err := Verify(path2); n != 3 || err != nil {
		t.Fatalf("Verify = %d, %v", n, err)
	}
}

func TestConcurrentAppend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	accepted, dropped := 0, 0
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				err := l.Append(ev(g*1000 + i))
				mu.Lock()
				switch {
				case err == nil:
					accepted++
				case errors.Is(err, ErrOverflow):
					dropped++
				default:
					t.Error(err)
				}
				mu.Unlock()
				if i%100 == 0 {
					if err := l.Sync(); err != nil {
						t.Error(err)
					}
				}
			}
		}()
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	n, err := Verify(path)
	if err != nil {
		t.Fatal(err)
	}
	// Each drop is recorded, possibly several in one marker entry.
	if n < accepted || (dropped == 0 && n != accepted) || n > accepted+dropped {
		t.Fatalf("Verify counted %d entries; %d accepted, %d dropped", n, accepted, dropped)
	}
}

// TestOverflow fills the buffer while the writer cannot run and checks the
// drop is recorded in the chain.
func TestOverflow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	// Hold the writer: a sync request it cannot answer until we read it.
	block := make(chan error)
	l.ch <- item{sync: block}
	// The writer is now blocked sending to block; fill the buffer.
	dropped := 0
	for i := range queueSize + 10 {
		if err := l.Append(ev(i)); errors.Is(err, ErrOverflow) {
			dropped++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if dropped < 10 {
		t.Fatalf("%d dropped, want at least 10", dropped)
	}
	<-block
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	n, err := Verify(path)
	if err != nil {
		t.Fatal(err)
	}
	if n != queueSize+10-dropped+1 {
		t.Fatalf("%d entries, want %d events and one drop marker", n, queueSize+10-dropped)
	}
	ls := lines(t, path)
	if !bytes.Contains(ls[0], []byte(fmt.Sprintf(`"verdict":"overloaded","detail":"audit: %d events dropped"`, dropped))) {
		t.Fatalf("first entry is not the drop marker: %s", ls[0])
	}
}

func TestVerifyMissing(t *testing.T) {
	if _, err := Verify(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Fatal("Verify of a missing file succeeded")
	}
	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, nil, 0o600)
	if n, err := Verify(empty); n != 0 || err != nil {
		t.Fatalf("empty: %d, %v", n, err)
	}
}
