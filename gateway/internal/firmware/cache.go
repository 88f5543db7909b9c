package firmware

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// cache is the images on disk, in DATA/firmware/images: SHA256.bin (the image) and SHA256.cose (its manifest),
// at most max bytes of images; the least recently served or fetched is evicted first. An entry's use time is
// its image file's modification time, so the order survives a restart.
type cache struct {
	dir string
	max int64
	log *slog.Logger

	mu      sync.Mutex
	entries map[string]*entry // hex SHA-256 of the image
	total   int64
}

type entry struct {
	size int64
	used time.Time
}

// openCache loads the cache in dir. Each image is hashed again: one whose content does not match its name
// (a torn write, a change on disk) is removed, as is a file without its pair.
func openCache(dir string, max int64, log *slog.Logger) (*cache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("firmware cache: %w", err)
	}
	c := &cache{dir: dir, max: max, log: log, entries: map[string]*entry{}}
	names, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		return nil, err
	}
	for _, p := range names {
		base := filepath.Base(p)
		sha, ext, _ := strings.Cut(base, ".")
		if ext == "bin" && validSHA(sha) {
			fi, err := c.check(sha)
			if err == nil {
				c.entries[sha] = &entry{size: fi.Size(), used: fi.ModTime()}
				c.total += fi.Size()
				continue
			}
			log.Warn("firmware cache: image dropped", "sha256", sha, "reason", err)
		}
		if ext == "cose" && validSHA(sha) {
			continue // kept with its image, removed below without one
		}
		_ = os.Remove(p)
	}
	for _, p := range names {
		if sha, ext, _ := strings.Cut(filepath.Base(p), "."); ext == "cose" && c.entries[sha] == nil {
			_ = os.Remove(p)
		}
	}
	c.evict(0)
	return c, nil
}

// check hashes the image sha and checks that its manifest is there.
func (c *cache) check(sha string) (os.FileInfo, error) {
	if _, err := os.Stat(c.path(sha, "cose")); err != nil {
		return nil, fmt.Errorf("no manifest")
	}
	f, err := os.Open(c.path(sha, "bin"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sha {
		return nil, fmt.Errorf("content hashes to %s", got)
	}
	return f.Stat()
}

func (c *cache) path(sha, ext string) string { return filepath.Join(c.dir, sha+"."+ext) }

// validSHA reports whether s is 64 lowercase hexadecimal digits.
func validSHA(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, r := range s {
		if (r < '0' || r > '9') && (r < 'a' || r > 'f') {
			return false
		}
	}
	return true
}

// put adds a verified image and its manifest, evicting the least recently used images to stay under max.
func (c *cache) put(sha string, image, manifest []byte) error {
	if int64(len(image)) > c.max {
		return fmt.Errorf("image of %d bytes is over updates.cache_bytes (%d)", len(image), c.max)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[sha] != nil {
		return nil
	}
	c.evict(int64(len(image)))
	if err := writeAtomic(c.path(sha, "cose"), manifest); err != nil {
		return err
	}
	if err := writeAtomic(c.path(sha, "bin"), image); err != nil {
		_ = os.Remove(c.path(sha, "cose"))
		return err
	}
	c.entries[sha] = &entry{size: int64(len(image)), used: time.Now()}
	c.total += int64(len(image))
	return nil
}

// evict removes the least recently used images until room more bytes fit under max (mu held, or at open).
func (c *cache) evict(room int64) {
	if c.total+room <= c.max {
		return
	}
	shas := make([]string, 0, len(c.entries))
	for sha := range c.entries {
		shas = append(shas, sha)
	}
	sort.Slice(shas, func(i, j int) bool { return c.entries[shas[i]].used.Before(c.entries[shas[j]].used) })
	for _, sha := range shas {
		if c.total+room <= c.max {
			return
		}
		// A device downloading it keeps its open file; the next request finds it gone (404).
		_ = os.Remove(c.path(sha, "bin"))
		_ = os.Remove(c.path(sha, "cose"))
		c.total -= c.entries[sha].size
		delete(c.entries, sha)
		c.log.Info("firmware cache: image evicted", "sha256", sha)
	}
}

// open opens the image sha for reading and marks it used; os.ErrNotExist when it is not cached.
func (c *cache) open(sha string) (*os.File, time.Time, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[sha]
	if e == nil {
		return nil, time.Time{}, os.ErrNotExist
	}
	f, err := os.Open(c.path(sha, "bin"))
	if err != nil {
		return nil, time.Time{}, err
	}
	if now := time.Now(); now.Sub(e.used) > time.Minute { // one touch a minute is enough for the order
		e.used = now
		_ = os.Chtimes(c.path(sha, "bin"), now, now)
	}
	return f, e.used, nil
}

// manifest returns the cached manifest of image sha, or nil.
func (c *cache) manifest(sha string) []byte {
	c.mu.Lock()
	ok := c.entries[sha] != nil
	c.mu.Unlock()
	if !ok {
		return nil
	}
	b, err := os.ReadFile(c.path(sha, "cose"))
	if err != nil {
		return nil
	}
	return b
}

// bytes is the size of the cached images.
func (c *cache) bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// writeAtomic writes b to path through a temporary file and a rename.
func writeAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("firmware cache: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("firmware cache: %w", err)
	}
	return nil
}
