package audit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"

	"github.com/vitalgate/vitalgate/internal/fileerr"
)

// Verify checks the whole chain at path. It returns the number of entries
// that verified, and for the first broken line a [*LineError] saying which
// line and why: edited (bad hash or not canonical), removed, inserted or
// reordered (wrong number or prev), or truncated (no final newline). Whole
// lines removed from the end cannot be seen from the file alone: compare n
// with a count kept elsewhere. [Check] also lists the gaps the log records.
func Verify(path string) (n int, err error) {
	r, err := Check(path)
	return r.Entries, err
}

// Report is the result of [Check].
type Report struct {
	Entries int    // entries that verified
	Gaps    []Gap  // records of events missing from the log, in order
	Missing uint64 // events the gaps account for
}

// Gap is an entry recording events the log does not hold: dropped because
// the buffer was full, or lost because writes failed.
type Gap struct {
	Line   int
	Events uint64
	Detail string
}

// gapDetail matches the detail of a drop record and of a gap record.
var gapDetail = regexp.MustCompile(`^audit: ([0-9]+) events (dropped|lost)\b`)

// Check is [Verify] that also returns the gaps recorded in the chain (see
// Write errors in the package documentation): Missing is the number of
// events they account for.
func Check(path string) (Report, error) {
	var rep Report
	f, err := os.Open(path)
	if err != nil {
		return rep, fileerr.Wrap("verify audit log", path, err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 64<<10)
	prev := Anchor
	for line := 1; ; line++ {
		b, err := readLine(r)
		if err == io.EOF {
			return rep, nil
		}
		bad := func(format string, args ...any) (Report, error) {
			return rep, &LineError{Path: path, Line: line, Reason: fmt.Sprintf(format, args...)}
		}
		switch {
		case errors.Is(err, errTruncated):
			return bad("incomplete line at the end of the file (truncated)")
		case errors.Is(err, errTooLong):
			return bad("longer than %d bytes", maxLine)
		case err != nil:
			return rep, fileerr.Wrap("verify audit log", path, err)
		}
		num, p, hash, e, err := parseLine(b)
		if err != nil {
			return bad("%v", err)
		}
		if num != uint64(line) {
			return bad("entry number %d where %d was expected (lines removed, inserted or reordered)", num, line)
		}
		if p != prev {
			if line == 1 {
				return bad("prev is not the anchor of 64 zeros (lines removed at the start)")
			}
			return bad("prev does not match the hash of line %d (lines removed, inserted or reordered)", line-1)
		}
		prev = hash
		rep.Entries++
		if m := gapDetail.FindStringSubmatch(e.Detail); m != nil && e.Verdict == "overloaded" && e.Dev == "" && e.Remote == "" {
			n, _ := strconv.ParseUint(m[1], 10, 64)
			rep.Gaps = append(rep.Gaps, Gap{Line: line, Events: n, Detail: e.Detail})
			rep.Missing += n
		}
	}
}

var (
	errTruncated = errors.New("truncated line")
	errTooLong   = errors.New("line too long")
)

// readLine returns the next line without its newline, io.EOF at the end,
// errTruncated for a last line without newline, errTooLong past maxLine.
func readLine(r *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(buf)+len(chunk) > maxLine+1 {
			return nil, errTooLong
		}
		buf = append(buf, chunk...)
		switch {
		case err == nil:
			return buf[:len(buf)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF:
			if len(buf) == 0 {
				return nil, io.EOF
			}
			return nil, errTruncated
		default:
			return nil, err
		}
	}
}
