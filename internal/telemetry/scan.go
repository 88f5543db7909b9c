package telemetry

import (
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// The CBOR decoder checks well-formedness, types and limits, but has no
// option for two rules of the record format, which scan applies to a record
// the decoder has accepted:
//
//   - every head is in its shortest form (RFC 8949 section 4.2.1): integers,
//     lengths of strings, arrays and maps, and tags (these are refused
//     anyway). Floats may have any width: a float32 sample of 1.5 is fine.
//   - no null or undefined: an optional key ("bat", "period_ms") is left
//     out, never sent as null; the decoder would read null as absent.

// scanner walks a record that the decoder has accepted: well-formed,
// definite lengths, no tags, at most [MaxDepth] deep. It still checks bounds
// and depth, and reports any surprise as malformed.
type scanner struct {
	b   []byte
	off int
}

// scan applies the rules above to the record b.
func scan(b []byte) error {
	s := scanner{b: b}
	if err := s.item(1, nil, false); err != nil {
		return err
	}
	if s.off != len(b) {
		return s.invalid()
	}
	return nil
}

// item checks the item at s.off, depth levels deep (the record map is 1).
// key is the map key the item is the value of, or in whose value it is
// (inArray); nil for the record map and for keys.
func (s *scanner) item(depth int, key []byte, inArray bool) error {
	if s.off >= len(s.b) {
		return s.invalid()
	}
	c := s.b[s.off]
	if c>>5 == 7 {
		return s.simple(c, key, inArray)
	}
	arg, n, err := readHead(s.b[s.off:])
	if err == errNonMinimal {
		return verdict.New(verdict.Malformed, "record: non-minimal CBOR head at byte %d: integers and lengths must use the shortest form", s.off)
	}
	if err != nil {
		return s.invalid()
	}
	start := s.off
	s.off += n
	switch c >> 5 {
	case 0, 1:
		return nil
	case 2, 3:
		if arg > uint64(len(s.b)-s.off) {
			return s.invalid()
		}
		s.off += int(arg)
		return nil
	case 4:
		if depth > MaxDepth || arg > uint64(len(s.b)-s.off) {
			return s.invalid()
		}
		for i := uint64(0); i < arg; i++ {
			// fast path: float32 samples
			if s.off+5 <= len(s.b) && s.b[s.off] == 0xfa {
				s.off += 5
				continue
			}
			if err := s.item(depth+1, key, true); err != nil {
				return err
			}
		}
		return nil
	case 5:
		if depth > MaxDepth || arg > uint64(len(s.b)-s.off) {
			return s.invalid()
		}
		for i := uint64(0); i < arg; i++ {
			k := s.off
			if err := s.item(depth+1, nil, false); err != nil {
				return err
			}
			if err := s.item(depth+1, keyText(s.b[k:s.off]), false); err != nil {
				return err
			}
		}
		return nil
	}
	s.off = start
	return s.invalid() // a tag: the decoder refuses them
}

// simple checks a major type 7 item (float or simple value) at s.off.
func (s *scanner) simple(c byte, key []byte, inArray bool) error {
	if c == 0xf6 || c == 0xf7 {
		what := "null"
		if c == 0xf7 {
			what = "undefined"
		}
		if inArray {
			return verdict.New(verdict.Malformed, "record: %s inside %q", what, clip(string(key), 32))
		}
		return verdict.New(verdict.Malformed, "record: %q is %s: null is never a value (leave an optional key out)", clip(string(key), 32), what)
	}
	n := 0
	switch c {
	case 0xf4, 0xf5: // false, true
		n = 1
	case 0xf9:
		n = 3
	case 0xfa:
		n = 5
	case 0xfb:
		n = 9
	default:
		// Simple values other than false and true: the decoder would read
		// simple(15) as the integer 15, so a number had two encodings.
		return verdict.New(verdict.Malformed, "record: CBOR simple value 0x%02x at byte %d: not a number, text or boolean", c, s.off)
	}
	if n > len(s.b)-s.off {
		return s.invalid()
	}
	s.off += n
	return nil
}

// keyText is the text of the encoded map key k, nil if it is not text.
func keyText(k []byte) []byte {
	if len(k) == 0 || k[0]>>5 != 3 {
		return nil
	}
	_, n, err := readHead(k)
	if err != nil {
		return nil
	}
	return k[n:]
}

func (s *scanner) invalid() error {
	return verdict.New(verdict.Malformed, "record: invalid CBOR at byte %d", s.off)
}
