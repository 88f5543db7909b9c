package testvectors

import (
	"encoding/binary"
	"errors"
	"math"
)

// A tiny CBOR writer for hand-made (often deliberately broken) records.

func hd(major byte, n uint64) []byte {
	switch {
	case n < 24:
		return []byte{major<<5 | byte(n)}
	case n <= math.MaxUint8:
		return []byte{major<<5 | 24, byte(n)}
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16([]byte{major<<5 | 25}, uint16(n))
	case n <= math.MaxUint32:
		return binary.BigEndian.AppendUint32([]byte{major<<5 | 26}, uint32(n))
	}
	return binary.BigEndian.AppendUint64([]byte{major<<5 | 27}, n)
}

func cUint(n uint64) []byte { return hd(0, n) }

func cInt(n int64) []byte {
	if n >= 0 {
		return hd(0, uint64(n))
	}
	return hd(1, uint64(-1-n))
}

func cText(s string) []byte  { return append(hd(3, uint64(len(s))), s...) }
func cBytes(b []byte) []byte { return append(hd(2, uint64(len(b))), b...) }
func cFloat64(f float64) []byte {
	return binary.BigEndian.AppendUint64([]byte{0xfb}, math.Float64bits(f))
}
func cFloat32(f float32) []byte {
	return binary.BigEndian.AppendUint32([]byte{0xfa}, math.Float32bits(f))
}

func cArr(items ...[]byte) []byte {
	out := hd(4, uint64(len(items)))
	for _, it := range items {
		out = append(out, it...)
	}
	return out
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// kv is one map entry with a raw key and a raw value.
type kv struct{ k, v []byte }

// tk is an entry with a text key.
func tk(k string, v []byte) kv { return kv{cText(k), v} }

// rmap is an ordered map that may hold duplicate or odd keys.
type rmap []kv

func (m rmap) bytes() []byte {
	out := hd(5, uint64(len(m)))
	for _, e := range m {
		out = append(out, e.k...)
		out = append(out, e.v...)
	}
	return out
}

// indef encodes m as an indefinite-length map.
func (m rmap) indef() []byte {
	out := []byte{0xbf}
	for _, e := range m {
		out = append(out, e.k...)
		out = append(out, e.v...)
	}
	return append(out, 0xff)
}

// set replaces the value of text key k (or appends it).
func (m rmap) set(k string, v []byte) rmap {
	out := append(rmap(nil), m...)
	key := cText(k)
	for i, e := range out {
		if string(e.k) == string(key) {
			out[i].v = v
			return out
		}
	}
	return append(out, kv{key, v})
}

// del removes text key k.
func (m rmap) del(k string) rmap {
	key := cText(k)
	var out rmap
	for _, e := range m {
		if string(e.k) != string(key) {
			out = append(out, e)
		}
	}
	return out
}

// add appends an entry, even a duplicate.
func (m rmap) add(e kv) rmap { return append(append(rmap(nil), m...), e) }

// Widen returns a copy of b with the head at b[at] re-encoded one size
// longer, the same value in a non-minimal form: 0x05 becomes 0x18 0x05,
// 0x18 0x05 becomes 0x19 0x00 0x05. A head with an 8-byte argument cannot
// be widened: Widen panics.
func Widen(b []byte, at int) []byte { return widen(b, at) }

func widen(b []byte, at int) []byte {
	major, ai := b[at]>>5, b[at]&0x1f
	var arg uint64
	n := 1
	switch ai {
	case 24:
		arg, n = uint64(b[at+1]), 2
	case 25:
		arg, n = uint64(binary.BigEndian.Uint16(b[at+1:])), 3
	case 26:
		arg, n = uint64(binary.BigEndian.Uint32(b[at+1:])), 5
	default:
		if ai > 24 {
			panic("testvectors: cannot widen this head")
		}
		arg = uint64(ai)
	}
	var h []byte
	switch ai {
	case 24:
		h = binary.BigEndian.AppendUint16([]byte{major<<5 | 25}, uint16(arg))
	case 25:
		h = binary.BigEndian.AppendUint32([]byte{major<<5 | 26}, uint32(arg))
	case 26:
		h = binary.BigEndian.AppendUint64([]byte{major<<5 | 27}, arg)
	default:
		h = []byte{major<<5 | 24, byte(arg)}
	}
	return cat(b[:at], h, b[at+n:])
}

// wide is the head of major type major and argument n, one size longer than
// the shortest.
func wide(major byte, n uint64) []byte { return widen(hd(major, n), 0) }

// Head is one head of a CBOR item (an integer, a length, a tag; not a float
// or simple value): its offset and whether its argument has the shortest
// form (RFC 8949 section 4.2.1).
type Head struct {
	Off     int
	Minimal bool
}

// Heads returns the heads of b, one well-formed CBOR item with definite
// lengths, in order. It does not look inside byte strings. It is an
// implementation independent of the gateway's parsers, for tests and
// fuzzers to check them against.
func Heads(b []byte) ([]Head, error) {
	var hs []Head
	off, err := heads(b, 0, 0, &hs)
	if err == nil && off != len(b) {
		err = errors.New("trailing bytes")
	}
	return hs, err
}

var errCBOR = errors.New("not well-formed definite-length CBOR")

func heads(b []byte, off, depth int, hs *[]Head) (int, error) {
	if depth > 64 || off >= len(b) {
		return 0, errCBOR
	}
	major, ai := b[off]>>5, b[off]&0x1f
	width := map[byte]int{24: 1, 25: 2, 26: 4, 27: 8}
	if ai >= 28 {
		return 0, errCBOR
	}
	n := 1 + width[ai]
	if n > len(b)-off {
		return 0, errCBOR
	}
	if major == 7 {
		return off + n, nil
	}
	arg := uint64(ai)
	if ai >= 24 {
		arg = 0
		for _, c := range b[off+1 : off+n] {
			arg = arg<<8 | uint64(c)
		}
	}
	minimal := ai < 24 || arg >= map[byte]uint64{24: 24, 25: 1 << 8, 26: 1 << 16, 27: 1 << 32}[ai]
	*hs = append(*hs, Head{Off: off, Minimal: minimal})
	off += n
	switch major {
	case 2, 3:
		if arg > uint64(len(b)-off) {
			return 0, errCBOR
		}
		return off + int(arg), nil
	case 4, 5:
		if arg > uint64(len(b)-off) {
			return 0, errCBOR
		}
		items := int(arg)
		if major == 5 {
			items *= 2
		}
		var err error
		for range items {
			if off, err = heads(b, off, depth+1, hs); err != nil {
				return 0, err
			}
		}
		return off, nil
	case 6:
		return heads(b, off, depth+1, hs)
	}
	return off, nil
}
