package fleet

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// seqBlock is how many sequence numbers a device reserves at a time. The
// reservation is written before any of its numbers is used, so a rerun (even
// after kill -9) continues above every seq the previous run sent, at the cost
// of a gap of at most seqBlock: seq only has to increase, not be dense.
const seqBlock = 1000

// seqStore keeps each device's reserved high-water seq in a small file
// dir/ID.seq (decimal). A nil *seqStore keeps nothing.
type seqStore struct{ dir string }

func newSeqStore(dir string) (*seqStore, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	return &seqStore{dir: dir}, nil
}

func (s *seqStore) path(id string) string { return filepath.Join(s.dir, id+".seq") }

// load returns the reserved high-water seq of id: the next run starts above
// it. A missing file is 0.
func (s *seqStore) load(id string) (uint64, error) {
	if s == nil {
		return 0, nil
	}
	b, err := os.ReadFile(s.path(id))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read seq state: %w", err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("seq state %s: %w", s.path(id), err)
	}
	return n, nil
}

// reserve durably records that id may use seqs up to upTo (write to a
// temporary file, then rename over the old one).
func (s *seqStore) reserve(id string, upTo uint64) error {
	if s == nil {
		return nil
	}
	p := s.path(id)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatUint(upTo, 10)+"\n"), 0o644); err != nil {
		return fmt.Errorf("write seq state: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("write seq state: %w", err)
	}
	return nil
}

// seqs hands out one device's sequence numbers, reserving blocks in the store.
type seqs struct {
	store    *seqStore
	id       string
	reserved uint64
}

// ensure reserves a new block when next would pass the reservation.
func (q *seqs) ensure(next uint64) error {
	if next <= q.reserved {
		return nil
	}
	up := next + seqBlock - 1
	if err := q.store.reserve(q.id, up); err != nil {
		return err
	}
	q.reserved = up
	return nil
}

// dirOrEmpty is the state directory, "" for a store that keeps nothing.
func (s *seqStore) dirOrEmpty() string {
	if s == nil {
		return ""
	}
	return s.dir
}
