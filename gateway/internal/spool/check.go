package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"time"
)

// ErrCorrupt is the error of [Open] for a queue file that is damaged: cut
// short, pages overwritten, or bbolt's own consistency check failing. The
// file is left as it is.
var ErrCorrupt = errors.New("queue corrupt")

// ErrLost is the error of [Open] when the queue's marker file says a queue
// was created at the path but the file is missing or empty: its records and
// every device's last accepted seq are gone, and starting afresh would
// silently reopen every device's replay window.
var ErrLost = errors.New("queue lost")

// ErrInUse is returned by [Open] and [Reset] while another process, a
// running gateway, holds the queue file. Nothing about the file is judged
// then: its pages may be changing under a reader.
var ErrInUse = errors.New("in use by another process (a running gateway?)")

// The on-disk layout of a bbolt file, as far as [checkFile] reads it
// (go.etcd.io/bbolt/internal/common, native byte order).
const (
	pageHeaderSize   = 16 // id uint64, flags uint16, count uint16, overflow uint32
	elementSize      = 16 // branch: pos, ksize uint32, pgid uint64; leaf: flags, pos, ksize, vsize uint32
	bucketHeaderSize = 16 // root pgid uint64, sequence uint64
	metaChecksumAt   = 56 // the meta's FNV-64a covers the bytes before its checksum
	metaSize         = 64
	branchPageFlag   = 0x01
	leafPageFlag     = 0x02
	freelistPageFlag = 0x10
	bucketLeafFlag   = 0x01
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	noFreelist       = ^uint64(0)
	// maxPageSpan bounds one page with its overflow pages. The queue's
	// largest values are records (under 200 KiB) and lastlog entries of a
	// commit (about 150 bytes per device of a batch); a larger page is
	// damage, and reading it would cost memory the file size allows.
	maxPageSpan = 64 << 20
)

// boltMeta is what checkFile needs of a meta page.
type boltMeta struct {
	pageSize uint32
	root     uint64 // root bucket's page
	freelist uint64
	hwm      uint64 // high-water mark: pages below it are in use or free
	txid     uint64
}

// parseMeta reads the meta of the page in b; ok is false if the meta is not
// valid (magic, version, checksum), as bbolt would judge it.
func parseMeta(b []byte) (m boltMeta, ok bool) {
	if len(b) < pageHeaderSize+metaSize {
		return m, false
	}
	b = b[pageHeaderSize:]
	ne := binary.NativeEndian
	h := fnv.New64a()
	h.Write(b[:metaChecksumAt])
	if ne.Uint32(b[0:]) != boltMagic || ne.Uint32(b[4:]) != boltVersion || ne.Uint64(b[metaChecksumAt:]) != h.Sum64() {
		return m, false
	}
	return boltMeta{pageSize: ne.Uint32(b[8:]), root: ne.Uint64(b[16:]), freelist: ne.Uint64(b[32:]),
		hwm: ne.Uint64(b[40:]), txid: ne.Uint64(b[48:])}, true
}

// checkFile checks the structure of the bbolt file at path before bbolt
// maps it. bbolt trusts its file: a page ID beyond the end of a truncated
// file is a fault in the mapped memory (SIGBUS or SIGSEGV, which no recover
// catches), and a damaged page header or element is a panic, some of them
// in goroutines of bbolt's own where no recover can reach. So this reads
// the file with plain reads, never trusting an offset: it picks the meta
// page bbolt would use, requires the file to hold every page below its
// high-water mark, and walks every bucket's tree from the root, checking
// each page's ID, type, size and elements against the page's bounds, the
// order of the keys, and that no page is referenced twice. Keys and values
// are not interpreted (that is load's part).
// The error wraps [ErrCorrupt].
func checkFile(path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("check queue file: %w", err)
	}
	defer f.Close()
	c := &checker{f: f}
	if err := c.run(size); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrCorrupt, path, err)
	}
	return nil
}

type checker struct {
	f    *os.File
	ps   uint64   // page size
	hwm  uint64   // pages in use or free are below it
	seen []uint64 // bitmap of the pages referenced so far
	hdr  [pageHeaderSize]byte
}

func (c *checker) run(size int64) error {
	m, err := c.meta(size)
	if err != nil {
		return err
	}
	c.ps, c.hwm = uint64(m.pageSize), m.hwm
	if c.hwm < 2 || c.hwm > uint64(size)/c.ps {
		return fmt.Errorf("file is %d bytes, its pages (%d of %d bytes) need %d: cut short", size, c.hwm, c.ps, c.hwm*c.ps)
	}
	c.seen = make([]uint64, (c.hwm+63)/64)
	if m.freelist != noFreelist {
		if err := c.freelist(m.freelist); err != nil {
			return err
		}
	}
	return c.tree(m.root)
}

// meta returns the meta page bbolt would use: of the two that are valid,
// the one with the higher transaction ID.
func (c *checker) meta(size int64) (boltMeta, error) {
	buf := make([]byte, 4096)
	read := func(off int64) (boltMeta, bool) {
		n, err := c.f.ReadAt(buf, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return boltMeta{}, false
		}
		return parseMeta(buf[:n])
	}
	m0, ok0 := read(0)
	ps := int64(m0.pageSize)
	if !ok0 {
		// bbolt then looks for the second meta page at each page size.
		for ps = 1024; ps <= 1024<<14 && ps < size; ps *= 2 {
			if m, ok := read(ps); ok && int64(m.pageSize) == ps {
				break
			}
		}
	}
	if ps < 1024 || ps > 1024<<14 || ps&(ps-1) != 0 {
		return boltMeta{}, errors.New("no valid meta page (not a bbolt file, or its first pages are damaged)")
	}
	m1, ok1 := read(ps)
	ok0 = ok0 && int64(m0.pageSize) == ps
	ok1 = ok1 && int64(m1.pageSize) == ps
	switch {
	case ok0 && ok1 && m1.txid > m0.txid:
		return m1, nil
	case ok0:
		return m0, nil
	case ok1:
		return m1, nil
	}
	return boltMeta{}, errors.New("no valid meta page (not a bbolt file, or its first pages are damaged)")
}

// page reads page id with its overflow pages, after checking that it lies
// below the high-water mark, names itself id and was not referenced before.
func (c *checker) page(id uint64) ([]byte, error) {
	if id < 2 || id >= c.hwm {
		return nil, fmt.Errorf("reference to page %d, outside 2..%d", id, c.hwm-1)
	}
	if _, err := c.f.ReadAt(c.hdr[:], int64(id*c.ps)); err != nil {
		return nil, fmt.Errorf("read page %d: %w", id, err)
	}
	ne := binary.NativeEndian
	if got := ne.Uint64(c.hdr[0:]); got != id {
		return nil, fmt.Errorf("page %d names itself %d", id, got)
	}
	overflow := uint64(ne.Uint32(c.hdr[12:]))
	if id+overflow >= c.hwm || (overflow+1)*c.ps > maxPageSpan {
		return nil, fmt.Errorf("page %d: %d overflow pages, beyond the file's %d pages or %d bytes", id, overflow, c.hwm, maxPageSpan)
	}
	for p := id; p <= id+overflow; p++ {
		if c.seen[p/64]&(1<<(p%64)) != 0 {
			return nil, fmt.Errorf("page %d referenced twice", p)
		}
		c.seen[p/64] |= 1 << (p % 64)
	}
	b := make([]byte, (overflow+1)*c.ps)
	if _, err := c.f.ReadAt(b, int64(id*c.ps)); err != nil {
		return nil, fmt.Errorf("read page %d: %w", id, err)
	}
	return b, nil
}

// freelist checks the freelist page (bbolt writes none with NoFreelistSync,
// but reads one that a file has).
func (c *checker) freelist(id uint64) error {
	b, err := c.page(id)
	if err != nil {
		return fmt.Errorf("freelist: %w", err)
	}
	ne := binary.NativeEndian
	if flags := ne.Uint16(b[8:]); flags != freelistPageFlag {
		return fmt.Errorf("freelist page %d has type %#x", id, flags)
	}
	start, n := uint64(pageHeaderSize), uint64(ne.Uint16(b[10:]))
	if n == 0xFFFF {
		n = ne.Uint64(b[pageHeaderSize:])
		start += 8
	}
	if n > (uint64(len(b))-start)/8 {
		return fmt.Errorf("freelist page %d: %d IDs do not fit", id, n)
	}
	for i := uint64(0); i < n; i++ {
		if p := ne.Uint64(b[start+8*i:]); p < 2 || p >= c.hwm {
			return fmt.Errorf("freelist page %d: free page %d outside 2..%d", id, p, c.hwm-1)
		}
	}
	return nil
}

// maxDepth bounds the height of a bucket's tree: bbolt's pages hold at
// least two keys, so 64 levels would hold more keys than a file can.
const maxDepth = 64

// tree checks the B+tree of the bucket whose root page is root and, through
// its bucket entries, every bucket's below it: what bbolt's own walk over
// all buckets (at open, to rebuild the free list) would fail or fault on.
func (c *checker) tree(root uint64) error {
	var buckets []uint64 // root pages of the buckets found
	if _, err := c.subtree(root, nil, nil, 0, &buckets); err != nil {
		return err
	}
	for len(buckets) > 0 {
		b := buckets[len(buckets)-1]
		buckets = buckets[:len(buckets)-1]
		if _, err := c.subtree(b, nil, nil, 0, &buckets); err != nil {
			return err
		}
	}
	return nil
}

// subtree checks the tree under page id, whose keys must lie in [min, max)
// (nil: unbounded), as bbolt's key order check has it, and returns its
// largest key.
func (c *checker) subtree(id uint64, min, max []byte, depth int, buckets *[]uint64) ([]byte, error) {
	if depth >= maxDepth {
		return nil, fmt.Errorf("page %d: a tree deeper than %d levels", id, maxDepth)
	}
	b, err := c.page(id)
	if err != nil {
		return nil, err
	}
	ne := binary.NativeEndian
	n := int(ne.Uint16(b[10:]))
	if pageHeaderSize+n*elementSize > len(b) {
		return nil, fmt.Errorf("page %d: %d elements do not fit", id, n)
	}
	switch flags := ne.Uint16(b[8:]); flags {
	case branchPageFlag:
		if n == 0 {
			return nil, fmt.Errorf("branch page %d: no elements", id)
		}
		running := min
		for i := range n {
			off := pageHeaderSize + i*elementSize
			key, err := span(b, off, uint64(ne.Uint32(b[off:])), uint64(ne.Uint32(b[off+4:])))
			if err != nil {
				return nil, fmt.Errorf("branch page %d: element %d: %w", id, i, err)
			}
			if err := keyOrder(i, key, running, max); err != nil {
				return nil, fmt.Errorf("branch page %d: element %d: %w", id, i, err)
			}
			next := max
			if i < n-1 {
				o := off + elementSize
				if next, err = span(b, o, uint64(ne.Uint32(b[o:])), uint64(ne.Uint32(b[o+4:]))); err != nil {
					return nil, fmt.Errorf("branch page %d: element %d: %w", id, i+1, err)
				}
			}
			if running, err = c.subtree(ne.Uint64(b[off+8:]), key, next, depth+1, buckets); err != nil {
				return nil, err
			}
		}
		return running, nil
	case leafPageFlag:
		last, err := c.leaf(b, min, max, buckets)
		if err != nil {
			return nil, fmt.Errorf("leaf page %d: %w", id, err)
		}
		return last, nil
	default:
		return nil, fmt.Errorf("page %d in a bucket's tree has type %#x, want branch or leaf", id, flags)
	}
}

// keyOrder is bbolt's verifyKeyOrder: the first key of a page at or above
// min, each later one above the previous (min holds it), all below max.
func keyOrder(i int, key, min, max []byte) error {
	switch {
	case i == 0 && min != nil && bytes.Compare(min, key) > 0:
		return errors.New("key below its parent's")
	case i > 0 && bytes.Compare(min, key) >= 0:
		return errors.New("keys out of order")
	case max != nil && bytes.Compare(key, max) >= 0:
		return errors.New("key not below the next of its parent")
	}
	return nil
}

// leaf checks the elements of the leaf page b (a page of the file or an
// inline bucket's) against [min, max), collects the root pages of the
// buckets it holds, and returns its last key.
func (c *checker) leaf(b []byte, min, max []byte, buckets *[]uint64) ([]byte, error) {
	ne := binary.NativeEndian
	n := int(ne.Uint16(b[10:]))
	running := min
	for i := range n {
		off := pageHeaderSize + i*elementSize
		if off+elementSize > len(b) {
			return nil, fmt.Errorf("%d elements do not fit", n)
		}
		flags, pos := ne.Uint32(b[off:]), uint64(ne.Uint32(b[off+4:]))
		ksize, vsize := uint64(ne.Uint32(b[off+8:])), uint64(ne.Uint32(b[off+12:]))
		kv, err := span(b, off, pos, ksize+vsize)
		if err != nil {
			return nil, fmt.Errorf("element %d: %w", i, err)
		}
		key, value := kv[:ksize], kv[ksize:]
		if err := keyOrder(i, key, running, max); err != nil {
			return nil, fmt.Errorf("element %d: %w", i, err)
		}
		running = key
		if flags&bucketLeafFlag == 0 {
			continue
		}
		if len(value) < bucketHeaderSize {
			return nil, fmt.Errorf("bucket %q: header of %d bytes", key, len(value))
		}
		if root := ne.Uint64(value); root != 0 {
			*buckets = append(*buckets, root)
			continue
		}
		inline := value[bucketHeaderSize:]
		if len(inline) < pageHeaderSize || ne.Uint16(inline[8:]) != leafPageFlag {
			return nil, fmt.Errorf("bucket %q: inline page is not a leaf", key)
		}
		if _, err := c.leaf(inline, nil, nil, buckets); err != nil {
			return nil, fmt.Errorf("bucket %q: %w", key, err)
		}
	}
	return running, nil
}

// span returns the n bytes at pos from the element at off of page b, or an
// error if they are not all within b.
func span(b []byte, off int, pos, n uint64) ([]byte, error) {
	start := uint64(off) + pos
	if pos > uint64(len(b)) || n > uint64(len(b)) || start+n > uint64(len(b)) {
		return nil, fmt.Errorf("%d bytes at %d beyond the page's %d", n, start, len(b))
	}
	return b[start : start+n], nil
}

// MarkerSuffix names the marker file beside a queue file (path +
// MarkerSuffix): [Open] writes it, fsynced, once the queue exists, so a
// queue file that later goes missing or is emptied is told from a first
// start.
const MarkerSuffix = ".created"

// preflight checks the queue file at path before bbolt opens it.
func preflight(path string) error {
	// The structure is read only under the lock a running gateway holds:
	// its pages change while it writes, and a check beside it would find a
	// sound queue "corrupt" (and --reset-queue would then move a live queue
	// aside). The lock is released before bbolt takes its own.
	release, err := tryLock(path)
	if err != nil {
		return fmt.Errorf("open queue %s: %w", path, err)
	}
	defer release()
	fi, err := os.Stat(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("open queue %s: %w", path, err)
	}
	if err == nil && !fi.Mode().IsRegular() {
		return fmt.Errorf("open queue %s: not a regular file", path)
	}
	if err == nil && fi.Size() > 0 {
		return checkFile(path, fi.Size())
	}
	marker, merr := os.ReadFile(path + MarkerSuffix)
	switch {
	case errors.Is(merr, os.ErrNotExist):
		return nil // a first start
	case merr != nil:
		return fmt.Errorf("open queue %s: %w", path, merr)
	}
	state := "is missing"
	if err == nil {
		state = "is empty (0 bytes)"
	}
	return fmt.Errorf("%w: %s %s, but %s%s says a queue was created there (%s): its records and every device's last accepted seq are gone",
		ErrLost, path, state, path, MarkerSuffix, bytes.TrimSpace(firstLine(marker)))
}

func firstLine(b []byte) []byte {
	if len(b) > 200 {
		b = b[:200]
	}
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	}
	return b
}

// writeMarker writes path's marker file unless it exists: written to a
// temporary file, fsynced, renamed into place, and the directory fsynced.
func writeMarker(path string, noSync bool) error {
	marker := path + MarkerSuffix
	if _, err := os.Stat(marker); err == nil {
		return nil
	}
	tmp := marker + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write queue marker %s: %w", marker, err)
	}
	_, err = fmt.Fprintf(f, "queue created %s\n", time.Now().UTC().Format(time.RFC3339))
	if err == nil && !noSync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, marker)
	}
	if err == nil && !noSync {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write queue marker %s: %w", marker, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Reset moves a queue that [Open] refused aside, so that the next Open
// starts an empty one: the file at path (if any, even an empty one) is
// renamed to path.corrupt-TIME, not deleted, and the marker removed. It
// returns the new name ("" if there was no file). The queue must not be
// open. Everything the old file held (undelivered records, every device's
// last accepted seq) is no longer used.
func Reset(path string) (movedTo string, err error) {
	release, err := tryLock(path)
	if err != nil {
		return "", fmt.Errorf("reset queue %s: %w", path, err)
	}
	defer release()
	if _, err := os.Lstat(path); err == nil {
		movedTo = path + ".corrupt-" + time.Now().UTC().Format("20060102T150405.000000000Z")
		if err := os.Rename(path, movedTo); err != nil {
			return "", fmt.Errorf("reset queue %s: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("reset queue %s: %w", path, err)
	}
	if err := os.Remove(path + MarkerSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
		return movedTo, fmt.Errorf("reset queue %s: %w", path, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return movedTo, fmt.Errorf("reset queue %s: %w", path, err)
	}
	return movedTo, nil
}
