package testvectors

import (
	"encoding/binary"
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
