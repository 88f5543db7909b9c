package telemetry

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
)

// Value is the "val" of an observation: one number, or the samples of a
// waveform. Samples != nil marks a waveform (then Num is unused). On the
// wire and in JSON it is a number or an array of numbers, nothing else.
type Value struct {
	Num     float64
	Samples []float64
}

// Scalar returns a Value holding one number.
func Scalar(f float64) Value { return Value{Num: f} }

// Waveform returns a Value holding samples (a copy is not made).
func Waveform(samples []float64) Value {
	if samples == nil {
		samples = []float64{}
	}
	return Value{Samples: samples}
}

// IsWaveform reports whether v holds samples.
func (v Value) IsWaveform() bool { return v.Samples != nil }

var (
	errNotNumber  = errors.New("val: not a number or array of numbers")
	errNonFinite  = errors.New("val: NaN or infinite number")
	errNegZero    = errors.New("val: negative zero (-0.0); send 0")
	errTooMany    = errors.New("val: too many samples")
	errNonMinimal = errors.New("val: non-minimal CBOR head (use the shortest form)")
)

// UnmarshalCBOR implements cbor.Unmarshaler. It accepts an integer, a
// float16/32/64, or a definite-length array of those; NaN, infinities and
// negative zero are refused, and so are integers and array lengths not in
// their shortest form (floats may have any width). It parses by hand: this is
// the hot path of waveform records.
func (v *Value) UnmarshalCBOR(b []byte) error {
	if len(b) == 0 {
		return errNotNumber
	}
	if b[0]>>5 != 4 { // not an array: one number
		f, n, err := readNumber(b)
		if err != nil {
			return err
		}
		if n != len(b) {
			return errNotNumber
		}
		*v = Value{Num: f}
		return nil
	}
	count, off, err := readHead(b)
	if err != nil {
		return err
	}
	if count > MaxSamples {
		return errTooMany
	}
	// every sample takes at least one byte: bound the allocation by the input
	if count > uint64(len(b)-off) {
		return errNotNumber
	}
	s := make([]float64, count)
	for i := range s {
		// fast path: float32 samples, the common waveform encoding
		if off+5 <= len(b) && b[off] == 0xfa {
			bits := binary.BigEndian.Uint32(b[off+1:])
			if bits&0x7f800000 == 0x7f800000 {
				return errNonFinite
			}
			if bits == 0x80000000 {
				return errNegZero
			}
			s[i] = float64(math.Float32frombits(bits))
			off += 5
			continue
		}
		f, n, err := readNumber(b[off:])
		if err != nil {
			return err
		}
		s[i] = f
		off += n
	}
	if off != len(b) {
		return errNotNumber
	}
	*v = Value{Samples: s}
	return nil
}

// readHead reads the argument of a definite-length head: b[0] is the
// initial byte. It returns the argument and the head's length; an argument
// not in its shortest form is errNonMinimal.
func readHead(b []byte) (uint64, int, error) {
	ai := b[0] & 0x1f
	var arg uint64
	var n int
	switch {
	case ai < 24:
		return uint64(ai), 1, nil
	case ai == 24 && len(b) >= 2:
		arg, n = uint64(b[1]), 2
	case ai == 25 && len(b) >= 3:
		arg, n = uint64(binary.BigEndian.Uint16(b[1:])), 3
	case ai == 26 && len(b) >= 5:
		arg, n = uint64(binary.BigEndian.Uint32(b[1:])), 5
	case ai == 27 && len(b) >= 9:
		arg, n = binary.BigEndian.Uint64(b[1:]), 9
	default:
		return 0, 0, errNotNumber
	}
	if arg < minArg[ai-24] {
		return 0, 0, errNonMinimal
	}
	return arg, n, nil
}

// minArg is the smallest argument that needs ai 24, 25, 26, 27 (RFC 8949
// section 4.2.1: the shortest form).
var minArg = [4]uint64{24, 1 << 8, 1 << 16, 1 << 32}

// readNumber reads one CBOR integer or float from the start of b.
func readNumber(b []byte) (float64, int, error) {
	if len(b) == 0 {
		return 0, 0, errNotNumber
	}
	major := b[0] >> 5
	var f float64
	var n int
	switch major {
	case 0, 1:
		u, hn, err := readHead(b)
		if err != nil {
			return 0, 0, err
		}
		f, n = float64(u), hn
		if major == 1 {
			f = -1 - f
		}
		return f, n, nil
	case 7:
		switch {
		case b[0] == 0xf9 && len(b) >= 3:
			f, n = float16to64(binary.BigEndian.Uint16(b[1:])), 3
		case b[0] == 0xfa && len(b) >= 5:
			f, n = float64(math.Float32frombits(binary.BigEndian.Uint32(b[1:]))), 5
		case b[0] == 0xfb && len(b) >= 9:
			f, n = math.Float64frombits(binary.BigEndian.Uint64(b[1:])), 9
		default:
			return 0, 0, errNotNumber
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return 0, 0, errNonFinite
		}
		if f == 0 && math.Signbit(f) {
			return 0, 0, errNegZero
		}
		return f, n, nil
	}
	return 0, 0, errNotNumber
}

// float16to64 converts an IEEE 754 half-precision value exactly.
func float16to64(h uint16) float64 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch exp {
	case 0: // zero or subnormal: mant * 2^-24, exact in float64
		f := float64(mant) * (1.0 / (1 << 24))
		if sign != 0 {
			f = -f
		}
		return f
	case 0x1f: // infinity or NaN
		return float64(math.Float32frombits(sign | 0x7f800000 | mant<<13))
	}
	return float64(math.Float32frombits(sign | (exp+112)<<23 | mant<<13))
}

// MarshalCBOR implements cbor.Marshaler: the shortest float encoding that
// keeps each value exact (RFC 8949 core deterministic encoding). A negative
// zero is written as 0, which is what [Value.UnmarshalCBOR] accepts.
func (v Value) MarshalCBOR() ([]byte, error) {
	if v.Samples == nil {
		if !finite(v.Num) {
			return nil, errNonFinite
		}
		if v.Num == 0 {
			return encMode.Marshal(0.0)
		}
		return encMode.Marshal(v.Num)
	}
	s, copied := v.Samples, false
	for i, f := range v.Samples {
		if !finite(f) {
			return nil, errNonFinite
		}
		if f == 0 && math.Signbit(f) {
			if !copied {
				s, copied = append([]float64(nil), v.Samples...), true
			}
			s[i] = 0
		}
	}
	return encMode.Marshal(s)
}

// MarshalJSON implements json.Marshaler: a number or an array of numbers.
func (v Value) MarshalJSON() ([]byte, error) {
	if v.Samples == nil {
		if !finite(v.Num) {
			return nil, errNonFinite
		}
		return strconv.AppendFloat(nil, v.Num, 'g', -1, 64), nil
	}
	b := make([]byte, 0, 2+8*len(v.Samples))
	b = append(b, '[')
	for i, f := range v.Samples {
		if !finite(f) {
			return nil, errNonFinite
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendFloat(b, f, 'g', -1, 64)
	}
	return append(b, ']'), nil
}

// UnmarshalJSON implements json.Unmarshaler: a number or an array of numbers.
func (v *Value) UnmarshalJSON(b []byte) error {
	var raw any
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("val: %w", err)
	}
	switch x := raw.(type) {
	case float64:
		*v = Value{Num: x}
		return nil
	case []any:
		if len(x) > MaxSamples {
			return errTooMany
		}
		s := make([]float64, len(x))
		for i, e := range x {
			f, ok := e.(float64)
			if !ok {
				return errNotNumber
			}
			s[i] = f
		}
		*v = Value{Samples: s}
		return nil
	}
	return errNotNumber
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }
