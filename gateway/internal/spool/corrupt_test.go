package spool

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// filledQueue writes a closed queue of a few hundred KiB (many pages: q,
// last after a compaction, lastlog) and returns its path.
func filledQueue(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "queue.db")
	q := open(t, path, Options{NoSync: true})
	data := make([]byte, 300)
	for i := range 800 {
		if err := q.Append(fmt.Sprintf("dev-%d", i%40), uint64(i+1), data); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() < 256<<10 {
		t.Fatalf("queue file: %v, %v", fi, err)
	}
	return path
}

// openRefused opens path and wants an error wrapping want, on one line,
// naming the file.
func openRefused(t *testing.T, path string, want error) error {
	t.Helper()
	q, err := Open(path, Options{NoSync: true})
	if err == nil {
		q.Close()
		t.Fatalf("Open of a damaged queue succeeded")
	}
	if !errors.Is(err, want) || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), path) {
		t.Fatalf("Open: %q, want one line wrapping %q and naming %s", err, want, path)
	}
	return err
}

// TestOpenTruncated: a queue file cut to 64 KiB was mapped by bbolt and
// crashed the gateway with SIGSEGV; now Open refuses it with ErrCorrupt.
func TestOpenTruncated(t *testing.T) {
	path := filledQueue(t)
	if err := os.Truncate(path, 64<<10); err != nil {
		t.Fatal(err)
	}
	err := openRefused(t, path, ErrCorrupt)
	if !strings.Contains(err.Error(), "cut short") {
		t.Errorf("error %q does not say the file was cut short", err)
	}
	// Cut inside the meta pages: no valid meta.
	if err := os.Truncate(path, 100); err != nil {
		t.Fatal(err)
	}
	openRefused(t, path, ErrCorrupt)
}

// TestOpenDamagedPages: bytes overwritten in the data pages were a panic in
// bbolt (slice bounds, page assertions, some in its own goroutines); now
// Open refuses the file. Page headers and elements are checked for sure;
// flips elsewhere (inside keys and values) must at least never crash.
func TestOpenDamagedPages(t *testing.T) {
	path := filledQueue(t)
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ps := 4096
	pages := len(orig) / ps
	write := func(b []byte) {
		t.Helper()
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name string
		at   func(page int) int // offset in a page
		val  byte
	}{
		{"page id", func(int) int { return 0 }, 0x5a},
		{"page type", func(int) int { return 8 }, 0x40},
		{"element count", func(int) int { return 11 }, 0x7f},
		{"overflow", func(int) int { return 15 }, 0x7f},
		{"first element position", func(int) int { return 16 + 7 }, 0x7f},
	} {
		t.Run(c.name, func(t *testing.T) {
			for p := 2; p < pages; p++ {
				b := append([]byte(nil), orig...)
				off := p*ps + c.at(p)
				if b[off] == c.val {
					continue
				}
				b[off] = c.val
				write(b)
				q, err := Open(path, Options{NoSync: true})
				if err == nil {
					// A page no tree reaches (a free one) may be damaged
					// without harm.
					q.Close()
					continue
				}
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("page %d: %v, want ErrCorrupt", p, err)
				}
			}
		})
	}
	// Page 3 onwards holds the trees of this file: its header is checked.
	b := append([]byte(nil), orig...)
	b[3*ps] ^= 0xff
	write(b)
	openRefused(t, path, ErrCorrupt)

	// Random damage anywhere past the meta pages: an error or a sound
	// open, never a crash.
	rng := rand.New(rand.NewPCG(1, 2))
	corrupt := 0
	for range 300 {
		b := append([]byte(nil), orig...)
		for range 1 + rng.IntN(8) {
			b[2*ps+rng.IntN(len(b)-2*ps)] = byte(rng.Uint32())
		}
		write(b)
		q, err := Open(path, Options{NoSync: true})
		switch {
		case err == nil:
			q.Close()
		case errors.Is(err, ErrCorrupt):
			corrupt++
		default:
			t.Fatalf("Open: %v, want ErrCorrupt or success", err)
		}
	}
	if corrupt == 0 {
		t.Error("no random damage was detected")
	}
}

// TestOpenLost: a queue file cut to 0 bytes, or deleted, started an empty
// queue without a word, every device's replay state gone; now, once a queue
// was created there, Open refuses with ErrLost.
func TestOpenLost(t *testing.T) {
	path := filledQueue(t)
	if _, err := os.Stat(path + MarkerSuffix); err != nil {
		t.Fatalf("no marker beside the queue: %v", err)
	}
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	if err := openRefused(t, path, ErrLost); !strings.Contains(err.Error(), "empty") {
		t.Errorf("error %q does not say the file is empty", err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := openRefused(t, path, ErrLost); !strings.Contains(err.Error(), "missing") {
		t.Errorf("error %q does not say the file is missing", err)
	}
	if fi, err := os.Stat(path); err == nil {
		t.Fatalf("the refused Open created %s (%d bytes)", path, fi.Size())
	}
}

// TestReset: a refused queue is moved aside, not deleted, and the next Open
// starts empty (and marks the new queue).
func TestReset(t *testing.T) {
	path := filledQueue(t)
	if err := os.Truncate(path, 64<<10); err != nil {
		t.Fatal(err)
	}
	openRefused(t, path, ErrCorrupt)
	moved, err := Reset(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(moved); err != nil || fi.Size() != 64<<10 || !strings.HasPrefix(moved, path+".corrupt-") {
		t.Fatalf("moved to %q: %v %v", moved, fi, err)
	}
	q := open(t, path, Options{NoSync: true})
	if q.Len() != 0 {
		t.Fatalf("reset queue holds %d records", q.Len())
	}
	if _, ok := q.LastSeq("dev-1"); ok {
		t.Fatal("reset queue remembers a device")
	}
	q.Close()
	if _, err := os.Stat(path + MarkerSuffix); err != nil {
		t.Fatalf("no marker beside the new queue: %v", err)
	}
	// A missing file: only the marker goes.
	os.Remove(path)
	openRefused(t, path, ErrLost)
	if moved, err := Reset(path); err != nil || moved != "" {
		t.Fatalf("Reset of a missing file: %q, %v", moved, err)
	}
	open(t, path, Options{NoSync: true})
}

// TestOpenWithoutMarker: a queue written before markers existed opens, and
// gets its marker.
func TestOpenWithoutMarker(t *testing.T) {
	path := filledQueue(t)
	os.Remove(path + MarkerSuffix)
	q := open(t, path, Options{NoSync: true})
	if q.Len() != 800 {
		t.Fatalf("%d records, want 800", q.Len())
	}
	if _, err := os.Stat(path + MarkerSuffix); err != nil {
		t.Fatalf("no marker written: %v", err)
	}
}

// TestHeldQueueNotJudged: while a gateway holds the queue, another Open (a
// second gateway, `gateway replay reset`) says it is in use without reading
// its pages, which may be changing (a structural check beside a writer could
// call a sound queue corrupt), and Reset refuses to move it aside.
func TestHeldQueueNotJudged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue.db")
	q := open(t, path, Options{NoSync: true})
	defer q.Close()
	if err := q.Append("dev-1", 1, []byte("r")); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, Options{NoSync: true}); !errors.Is(err, ErrInUse) {
		t.Fatalf("Open of a held queue: %v, want ErrInUse", err)
	}
	if moved, err := Reset(path); !errors.Is(err, ErrInUse) || moved != "" {
		t.Fatalf("Reset of a held queue: %q %v, want ErrInUse", moved, err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the held queue was moved: %v", err)
	}
	if q.Len() != 1 {
		t.Fatalf("held queue has %d records, want 1", q.Len())
	}
}
