package envelope_test

import (
	"crypto/ecdsa"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"

	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/envelope/testvectors"
	"github.com/vitalgate/vitalgate/internal/telemetry"
)

// benchMsg is a realistic message: the record stamped now, signed with kid.
type benchMsg struct {
	name string
	msg  []byte
	tbs  []byte // its Sig_structure
	sig  []byte
}

func benchMsgs(b *testing.B, key string) []benchMsg {
	b.Helper()
	var out []benchMsg
	for _, r := range []*telemetry.Record{testvectors.SpO2Record(), testvectors.ECGRecord(250)} {
		r.TS = time.Now().UnixMilli()
		p, err := telemetry.Encode(r)
		if err != nil {
			b.Fatal(err)
		}
		msg, err := envelope.Sign(testvectors.Signer(key), testvectors.DeviceID, p)
		if err != nil {
			b.Fatal(err)
		}
		var m cose.Sign1Message
		if err := m.UnmarshalCBOR(msg); err != nil {
			b.Fatal(err)
		}
		var prot []byte
		if err := cbor.Unmarshal(m.Headers.RawProtected, &prot); err != nil {
			b.Fatal(err)
		}
		tbs, err := cbor.Marshal([]any{"Signature1", prot, []byte{}, m.Payload})
		if err != nil {
			b.Fatal(err)
		}
		name := r.Kind
		if r.Kind == "ecg" {
			name = "ecg250"
		}
		out = append(out, benchMsg{name: name, msg: msg, tbs: tbs, sig: m.Signature})
	}
	return out
}

func rawVerifier(b *testing.B, key string) cose.Verifier {
	alg := cose.AlgorithmEdDSA
	if _, ok := testvectors.PublicKey(key).(*ecdsa.PublicKey); ok {
		alg = cose.AlgorithmES256
	}
	cv, err := cose.NewVerifier(alg, testvectors.PublicKey(key))
	if err != nil {
		b.Fatal(err)
	}
	return cv
}

// raw is the signature check alone: go-cose's verifier (hash + ECDSA or
// Ed25519) on the ready Sig_structure, the same primitive Verify uses.
func raw(b *testing.B, key string) {
	cv := rawVerifier(b, key)
	for _, m := range benchMsgs(b, key) {
		b.Run(m.name, func(b *testing.B) {
			for b.Loop() {
				if err := cv.Verify(m.tbs, m.sig); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(m.name+"/parallel", func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := cv.Verify(m.tbs, m.sig); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// full is what the gateway does per message: COSE parse and verify, strict
// decode, schema check, time window.
func fullCheck(v *envelope.Verifier, s *telemetry.Schemas, msg []byte) error {
	p, err := v.Verify(msg)
	if err != nil {
		return err
	}
	r, err := telemetry.Decode(p)
	if err != nil {
		return err
	}
	if err := s.Check(r); err != nil {
		return err
	}
	return telemetry.CheckTime(r.TS, time.Now(), 0)
}

func full(b *testing.B, key string) {
	v := verifier(b, key)
	s := telemetry.DefaultSchemas()
	for _, m := range benchMsgs(b, key) {
		b.Run(m.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := fullCheck(v, s, m.msg); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(m.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := fullCheck(v, s, m.msg); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func BenchmarkRawVerifyES256(b *testing.B)    { raw(b, testvectors.P256) }
func BenchmarkRawVerifyEd25519(b *testing.B)  { raw(b, testvectors.Ed25519) }
func BenchmarkFullVerifyES256(b *testing.B)   { full(b, testvectors.P256) }
func BenchmarkFullVerifyEd25519(b *testing.B) { full(b, testvectors.Ed25519) }

// BenchmarkRecordCheck is the record half alone: Decode, Check, CheckTime.
func BenchmarkRecordCheck(b *testing.B) {
	v := verifier(b, testvectors.Ed25519)
	s := telemetry.DefaultSchemas()
	for _, m := range benchMsgs(b, testvectors.Ed25519) {
		p, err := v.Verify(m.msg)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(m.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r, err := telemetry.Decode(p)
				if err != nil {
					b.Fatal(err)
				}
				if err := s.Check(r); err != nil {
					b.Fatal(err)
				}
				if err := telemetry.CheckTime(r.TS, time.Now(), 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRatio times raw and full verification in alternating batches, so
// that load from other processes hits both alike, and reports full/raw.
func BenchmarkRatio(b *testing.B) {
	for _, key := range []string{testvectors.P256, testvectors.Ed25519} {
		cv := rawVerifier(b, key)
		v := verifier(b, key)
		s := telemetry.DefaultSchemas()
		for _, m := range benchMsgs(b, key) {
			b.Run(key+"/"+m.name, func(b *testing.B) {
				const batch = 20
				var rawT, fullT time.Duration
				for i := 0; i < b.N; i += batch {
					t0 := time.Now()
					for range batch {
						if err := cv.Verify(m.tbs, m.sig); err != nil {
							b.Fatal(err)
						}
					}
					t1 := time.Now()
					for range batch {
						if err := fullCheck(v, s, m.msg); err != nil {
							b.Fatal(err)
						}
					}
					t2 := time.Now()
					rawT += t1.Sub(t0)
					fullT += t2.Sub(t1)
				}
				b.ReportMetric(float64(fullT)/float64(rawT), "full/raw")
				b.ReportMetric(float64(fullT-rawT)/float64(b.N), "overhead-ns/op")
			})
		}
	}
}
