package envelope

import (
	"encoding/binary"
	"errors"
	"unicode/utf8"
)

// The parser below reads COSE_Sign1 by hand: go-cose's Sign1Message decoding
// goes through reflection and map[any]any headers and costs more than the
// whole record check (38 allocations, ~2.5 µs per message). It accepts a
// subset of what go-cose accepts (FuzzVerify checks that every message it
// accepts also verifies with go-cose) and is strict: definite lengths only,
// every head (integer, length, tag) in its shortest form (RFC 8949 section
// 4.2.1; floats may have any width), no tags inside, no duplicate or shared
// header labels, no header parameters but alg and kid, no trailing bytes.

// Limits on headers: enough for alg, kid, content type and a few more.
const (
	maxHeaderLabels = 16
	maxHeaderDepth  = 8
)

var (
	errNotSign1   = errors.New("not a COSE_Sign1 message")
	errTruncated  = errors.New("truncated or invalid CBOR")
	errDetached   = errors.New("detached payload")
	errEmptySig   = errors.New("empty signature")
	errTrailing   = errors.New("trailing bytes after the message")
	errHeader     = errors.New("invalid header")
	errHeaderDup  = errors.New("duplicate header label")
	errCrit       = errors.New("critical header parameters not supported")
	errKidType    = errors.New("kid is not a byte string")
	errLabel      = errors.New("unsupported header parameter")
	errIndefinite = errors.New("indefinite length")
	errTag        = errors.New("tag inside the message")
	errNonMinimal = errors.New("non-minimal CBOR head (use the shortest form)")
)

// sign1 is a parsed COSE_Sign1. Slices point into the message.
type sign1 struct {
	protected []byte // content of the protected bstr (a serialized map or empty)
	payload   []byte
	signature []byte
	alg       int64 // protected alg; valid when hasAlg
	hasAlg    bool
	kids      [2][]byte // protected, unprotected kid; nil when absent
}

// label is a decoded header label: an integer or a text string.
type label struct {
	text bool
	neg  bool
	n    uint64
	s    []byte
}

func (l label) equal(o label) bool {
	if l.text != o.text {
		return false
	}
	if l.text {
		return string(l.s) == string(o.s)
	}
	return l.neg == o.neg && l.n == o.n
}

func (l label) is(v int64) bool {
	if l.text {
		return false
	}
	if v < 0 {
		return l.neg && l.n == uint64(-1-v)
	}
	return !l.neg && l.n == uint64(v)
}

// head reads a definite-length CBOR head at b[0]: major type, argument,
// head length. An argument (integer, length, tag) must be in its shortest
// form: errNonMinimal, with major set, otherwise. Major type 7 is not checked
// here: its ai 25..27 are floats of a chosen width, not arguments.
func head(b []byte) (major byte, arg uint64, n int, err error) {
	if len(b) == 0 {
		return 0, 0, 0, errTruncated
	}
	major, ai := b[0]>>5, b[0]&0x1f
	switch {
	case ai < 24:
		return major, uint64(ai), 1, nil
	case ai == 24:
		if len(b) < 2 {
			return 0, 0, 0, errTruncated
		}
		arg, n = uint64(b[1]), 2
	case ai == 25:
		if len(b) < 3 {
			return 0, 0, 0, errTruncated
		}
		arg, n = uint64(binary.BigEndian.Uint16(b[1:])), 3
	case ai == 26:
		if len(b) < 5 {
			return 0, 0, 0, errTruncated
		}
		arg, n = uint64(binary.BigEndian.Uint32(b[1:])), 5
	case ai == 27:
		if len(b) < 9 {
			return 0, 0, 0, errTruncated
		}
		arg, n = binary.BigEndian.Uint64(b[1:]), 9
	case ai == 31:
		return 0, 0, 0, errIndefinite
	default:
		return 0, 0, 0, errTruncated // 28..30 are reserved
	}
	if major != 7 && arg < minArg[ai-24] {
		return major, 0, 0, errNonMinimal
	}
	return major, arg, n, nil
}

// minArg is the smallest argument that needs ai 24, 25, 26, 27.
var minArg = [4]uint64{24, 1 << 8, 1 << 16, 1 << 32}

// bstr reads a definite-length byte string at b[0].
func bstr(b []byte) (content []byte, n int, err error) {
	major, l, hn, err := head(b)
	if err != nil {
		return nil, 0, err
	}
	if major != 2 {
		return nil, 0, errNotSign1
	}
	if l > uint64(len(b)-hn) {
		return nil, 0, errTruncated
	}
	return b[hn : hn+int(l)], hn + int(l), nil
}

// skip returns the length of the well-formed item at b[0]: definite
// lengths, valid UTF-8 text, no tags, at most maxHeaderDepth deep.
func skip(b []byte, depth int) (int, error) {
	if depth > maxHeaderDepth {
		return 0, errHeader
	}
	if len(b) > 0 && b[0]>>5 == 7 {
		ai := b[0] & 0x1f
		switch {
		case ai < 24:
			return 1, nil
		case ai == 24:
			if len(b) < 2 || b[1] < 32 {
				return 0, errTruncated
			}
			return 2, nil
		}
	}
	major, arg, n, err := head(b)
	if err != nil {
		return 0, err
	}
	switch major {
	case 0, 1, 7: // integers, floats
		return n, nil
	case 2, 3:
		if arg > uint64(len(b)-n) {
			return 0, errTruncated
		}
		end := n + int(arg)
		if major == 3 && !utf8.Valid(b[n:end]) {
			return 0, errHeader
		}
		return end, nil
	case 4, 5:
		items := arg
		if major == 5 {
			if items > uint64(len(b)) {
				return 0, errTruncated
			}
			items *= 2
		}
		for i := uint64(0); i < items; i++ {
			if n >= len(b) {
				return 0, errTruncated
			}
			m, err := skip(b[n:], depth+1)
			if err != nil {
				return 0, err
			}
			n += m
		}
		return n, nil
	}
	return 0, errTag // major 6
}

// readLabel reads a header label (int or tstr) at b[0].
func readLabel(b []byte) (label, int, error) {
	major, arg, n, err := head(b)
	if err != nil {
		return label{}, 0, err
	}
	switch major {
	case 0, 1:
		return label{neg: major == 1, n: arg}, n, nil
	case 3:
		if arg > uint64(len(b)-n) {
			return label{}, 0, errTruncated
		}
		s := b[n : n+int(arg)]
		if !utf8.Valid(s) {
			return label{}, 0, errHeader
		}
		return label{text: true, s: s}, n + int(arg), nil
	}
	return label{}, 0, errHeader
}

// headerMap parses the header map at b[0] into m (bucket 0 protected, 1
// unprotected), appending its labels to seen. It returns the map's length.
func (m *sign1) headerMap(b []byte, bucket int, seen []label) (int, []label, error) {
	major, pairs, n, err := head(b)
	if err != nil {
		return 0, seen, err
	}
	if major != 5 {
		return 0, seen, errHeader
	}
	if pairs > maxHeaderLabels {
		return 0, seen, errHeader
	}
	for i := uint64(0); i < pairs; i++ {
		l, ln, err := readLabel(b[n:])
		if err != nil {
			return 0, seen, err
		}
		n += ln
		for _, s := range seen {
			if s.equal(l) {
				return 0, seen, errHeaderDup
			}
		}
		seen = append(seen, l)
		if n >= len(b) {
			return 0, seen, errTruncated
		}
		val := b[n:]
		vn, err := skip(val, 1)
		if err != nil {
			return 0, seen, err
		}
		val = val[:vn]
		n += vn
		switch {
		case l.is(1): // alg: int / tstr
			major, arg, hn, err := head(val)
			if err == nil && major == 3 {
				continue // a text alg: never ES256/EdDSA
			}
			if err != nil || hn != len(val) || major > 1 {
				return 0, seen, errHeader
			}
			if bucket != 0 {
				continue // only a protected alg counts
			}
			if major == 0 && arg <= 1<<62 {
				m.alg, m.hasAlg = int64(arg), true
			} else if major == 1 && arg <= 1<<62 {
				m.alg, m.hasAlg = -1-int64(arg), true
			}
		case l.is(2): // crit
			return 0, seen, errCrit
		case l.is(4): // kid
			kid, kn, err := bstr(val)
			if err != nil || kn != len(val) {
				return 0, seen, errKidType
			}
			m.kids[bucket] = kid
		default:
			// Devices send alg and kid; anything else is refused rather
			// than half understood.
			return 0, seen, errLabel
		}
	}
	return n, seen, nil
}

// parseSign1 parses a tagged or untagged COSE_Sign1 message.
func parseSign1(msg []byte, m *sign1) error {
	*m = sign1{}
	b := msg
	if len(b) > 0 && b[0]>>5 == 6 { // tag 18 (0xd2) or nothing
		if b[0] != 0xd2 {
			if _, _, _, err := head(b); errors.Is(err, errNonMinimal) {
				return err
			}
			return errNotSign1
		}
		b = b[1:]
	}
	if len(b) == 0 || b[0] != 0x84 { // array of 4
		if major, _, _, err := head(b); errors.Is(err, errNonMinimal) && major == 4 {
			return err
		}
		return errNotSign1
	}
	n := 1
	var labelBuf [2 * maxHeaderLabels]label
	seen := labelBuf[:0]
	// protected: bstr .cbor header_map / bstr .size 0
	p, pn, err := bstr(b[n:])
	if err != nil {
		return err
	}
	n += pn
	m.protected = p
	if len(p) > 0 {
		hn, s, err := m.headerMap(p, 0, seen)
		if err != nil {
			return err
		}
		if hn != len(p) {
			return errHeader
		}
		seen = s
	}
	// unprotected: header_map
	if n >= len(b) {
		return errTruncated
	}
	un, _, err := m.headerMap(b[n:], 1, seen)
	if err != nil {
		return err
	}
	n += un
	// payload: bstr / nil
	if n >= len(b) {
		return errTruncated
	}
	if b[n] == 0xf6 {
		return errDetached
	}
	payload, ln, err := bstr(b[n:])
	if err != nil {
		return err
	}
	n += ln
	m.payload = payload
	// signature: bstr
	sig, sn, err := bstr(b[n:])
	if err != nil {
		return err
	}
	n += sn
	if len(sig) == 0 {
		return errEmptySig
	}
	m.signature = sig
	if n != len(b) {
		return errTrailing
	}
	return nil
}

// appendBstrHead appends the shortest head of a byte string of length l.
func appendBstrHead(dst []byte, l int) []byte {
	switch {
	case l < 24:
		return append(dst, 0x40|byte(l))
	case l <= 0xff:
		return append(dst, 0x58, byte(l))
	case l <= 0xffff:
		return append(dst, 0x59, byte(l>>8), byte(l))
	}
	return append(dst, 0x5a, byte(l>>24), byte(l>>16), byte(l>>8), byte(l))
}

// sigStructurePrefix is the start of Sig_structure for COSE_Sign1:
// [ "Signature1", ...
var sigStructurePrefix = []byte{0x84, 0x6a, 'S', 'i', 'g', 'n', 'a', 't', 'u', 'r', 'e', '1'}

// toBeSigned appends the Sig_structure (RFC 9052 section 4.4) with empty
// external AAD to dst.
func (m *sign1) toBeSigned(dst []byte) []byte {
	dst = append(dst, sigStructurePrefix...)
	dst = appendBstrHead(dst, len(m.protected))
	dst = append(dst, m.protected...)
	dst = append(dst, 0x40) // external_aad: h''
	dst = appendBstrHead(dst, len(m.payload))
	return append(dst, m.payload...)
}
