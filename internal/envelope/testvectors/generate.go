package testvectors

import (
	"bytes"
	"fmt"
	"math"
	"strings"

	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// Record fields of the vectors.
const (
	seq = 42
	bat = 87
)

// ts is a minute before Now.
func ts() int64 { return Now.UnixMilli() - 60_000 }

func u8(v uint8) *uint8    { return &v }
func u64(v uint64) *uint64 { return &v }

// SpO2Record is the realistic spo2 record of the vectors and benchmarks.
func SpO2Record() *telemetry.Record {
	return &telemetry.Record{V: 1, Dev: DeviceID, Seq: seq, TS: ts(), Kind: "spo2", Bat: u8(bat),
		Obs: []telemetry.Observation{
			{Code: "MDC_PULS_OXIM_SAT_O2", Val: telemetry.Scalar(97), Unit: "%"},
			{Code: "MDC_PULS_OXIM_PULS_RATE", Val: telemetry.Scalar(72), Unit: "/min"},
		}}
}

// ECGRecord is an ecg record of n samples (4 ms apart, float32 precision).
func ECGRecord(n int) *telemetry.Record {
	s := make([]float64, n)
	for i := range s {
		x := float64(i) * 0.004
		s[i] = float64(float32(1.2*math.Exp(-math.Pow(math.Mod(x, 0.8)-0.2, 2)/0.0005) + 0.1*math.Sin(2*math.Pi*x)))
	}
	return &telemetry.Record{V: 1, Dev: DeviceID, Seq: seq, TS: ts(), Kind: "ecg", Bat: u8(bat),
		Obs: []telemetry.Observation{{Code: "MDC_ECG_ELEC_POTL_II", Val: telemetry.Waveform(s), Unit: "mV", PeriodMS: u64(4)}}}
}

func scalarRecord(kind string, obs ...telemetry.Observation) *telemetry.Record {
	return &telemetry.Record{V: 1, Dev: DeviceID, Seq: seq, TS: ts(), Kind: kind, Obs: obs}
}

func ob(code string, v float64, unit string) telemetry.Observation {
	return telemetry.Observation{Code: code, Val: telemetry.Scalar(v), Unit: unit}
}

func enc(r *telemetry.Record) []byte {
	b, err := telemetry.Encode(r)
	if err != nil {
		panic(err)
	}
	return b
}

// Hand-made records (rmap) for the cases Encode cannot produce.

func robs(code string, val []byte, unit string) rmap {
	return rmap{tk("code", cText(code)), tk("val", val), tk("unit", cText(unit))}
}

func spo2Obs() []rmap {
	return []rmap{robs("MDC_PULS_OXIM_SAT_O2", cUint(97), "%"), robs("MDC_PULS_OXIM_PULS_RATE", cUint(72), "/min")}
}

func rrec(kind string, obs ...rmap) rmap {
	items := make([][]byte, len(obs))
	for i, o := range obs {
		items[i] = o.bytes()
	}
	return rmap{tk("v", cUint(1)), tk("dev", cText(DeviceID)), tk("seq", cUint(seq)), tk("ts", cInt(ts())),
		tk("kind", cText(kind)), tk("obs", cArr(items...)), tk("bat", cUint(bat))}
}

func rspo2() rmap { return rrec("spo2", spo2Obs()...) }

func obsArr(obs ...rmap) []byte {
	items := make([][]byte, len(obs))
	for i, o := range obs {
		items[i] = o.bytes()
	}
	return cArr(items...)
}

type gen struct {
	cases []Case
	err   error
}

// signed adds a case whose message is a proper envelope (kid in the
// protected header, tagged) around payload, signed by key.
func (g *gen) signed(name, key string, payload []byte, v verdict.Verdict, detail string) {
	msg := sign1{key: Signer(key), protected: protAlgKid(algOf(key), DeviceID), payload: payload}.build()
	g.add(Case{Name: name, Key: key, Msg: msg, Payload: payload, Verdict: v, Detail: detail})
}

func (g *gen) add(c Case) {
	// every P-256 case carries an ECDSA signature, except the one that
	// checks an Ed25519 message against the P-256 key (Generate resets it)
	c.Randomized = c.Key == P256
	if c.Stage == "" {
		c.Stage = StageRecord
		if c.Payload == nil || c.Verdict == verdict.BadSignature {
			c.Stage = StageEnvelope
		}
	}
	for _, o := range g.cases {
		if o.Name == c.Name && g.err == nil {
			g.err = fmt.Errorf("duplicate case %s", c.Name)
		}
	}
	g.cases = append(g.cases, c)
}

// Generate builds the table afresh. Ed25519 cases come out byte-identical
// each time; ECDSA cases (Randomized) differ in their signatures.
func Generate() ([]Case, error) {
	g := &gen{}
	spo2 := enc(SpO2Record())
	if err := g.acceptedCases(spo2); err != nil {
		return nil, err
	}
	g.tooLargeCases()
	// the well-formed Ed25519 envelope around spo2 that the envelope cases alter
	base := sign1{key: Signer(Ed25519), protected: protAlgKid(algEdDSA, DeviceID), payload: spo2}
	good := base.build()
	g.malformedEnvelopeCases(spo2, base, good)
	g.nonMinimalEnvelopeCases(spo2, base, good)
	g.malformedRecordCases(spo2)
	g.recordEncodingCases()
	g.badSignatureCases(spo2, good)
	// identity_mismatch
	g.signed("identity_mismatch_dev", Ed25519, rspo2().set("dev", cText("dev-00002")).bytes(), verdict.IdentityMismatch, "")
	g.schemaCases()
	g.timeCases()
	return g.cases, g.err
}

// malformedEnvelope adds a case whose message is rejected as malformed before any record is read.
func (g *gen) malformedEnvelope(name string, msg []byte, detail string) {
	g.add(Case{Name: name, Key: Ed25519, Msg: msg, Verdict: verdict.Malformed, Detail: detail})
}

// malformedRecord adds a case whose payload, properly signed, is rejected as a malformed record.
func (g *gen) malformedRecord(name string, payload []byte, detail string) {
	g.signed(name, Ed25519, payload, verdict.Malformed, detail)
}

// acceptedCases adds the records every gateway accepts: each key and envelope form, each kind, and values at
// the edges of their encodings and limits.
func (g *gen) acceptedCases(spo2 []byte) error {
	ecg := enc(ECGRecord(250))
	for _, key := range []string{P256, Ed25519} {
		msg, err := envelope.Sign(Signer(key), DeviceID, spo2)
		if err != nil {
			return err
		}
		alg := "es256"
		if key == Ed25519 {
			alg = "eddsa"
		}
		g.add(Case{Name: "valid_" + alg + "_spo2", Key: key, Msg: msg, Payload: spo2, Verdict: verdict.Accepted})
		g.add(Case{Name: "valid_" + alg + "_untagged", Key: key, Verdict: verdict.Accepted, Payload: spo2,
			Msg: sign1{key: Signer(key), untagged: true, protected: protAlgKid(algOf(key), DeviceID), payload: spo2}.build()})
		g.add(Case{Name: "valid_" + alg + "_no_kid", Key: key, Verdict: verdict.Accepted, Payload: spo2,
			Msg: sign1{key: Signer(key), protected: protAlg(algOf(key)), payload: spo2}.build()})
		g.add(Case{Name: "valid_" + alg + "_kid_unprotected", Key: key, Verdict: verdict.Accepted, Payload: spo2,
			Msg: sign1{key: Signer(key), protected: protAlg(algOf(key)), payload: spo2,
				unprotected: rmap{{cUint(4), cBytes([]byte(DeviceID))}}.bytes()}.build()})
	}
	g.signed("valid_es256_ecg_250", P256, ecg, verdict.Accepted, "")
	g.signed("valid_eddsa_ecg_250", Ed25519, ecg, verdict.Accepted, "")
	ed := Ed25519
	g.signed("valid_bp", ed, enc(scalarRecord("bp", ob("MDC_PRESS_BLD_NONINV_SYS", 128, "mm[Hg]"),
		ob("MDC_PRESS_BLD_NONINV_DIA", 82, "mm[Hg]"), ob("MDC_PRESS_BLD_NONINV_MEAN", 97, "mm[Hg]"))), verdict.Accepted, "")
	g.signed("valid_bp_with_pulse", ed, enc(scalarRecord("bp", ob("MDC_PRESS_BLD_NONINV_SYS", 128, "mm[Hg]"),
		ob("MDC_PRESS_BLD_NONINV_DIA", 82, "mm[Hg]"), ob("MDC_PRESS_BLD_NONINV_MEAN", 97, "mm[Hg]"),
		ob("MDC_PULS_RATE_NON_INV", 64, "/min"))), verdict.Accepted, "")
	g.signed("valid_glucose", ed, enc(scalarRecord("glucose", ob("MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD", 104, "mg/dL"))), verdict.Accepted, "")
	g.signed("valid_temp", ed, enc(scalarRecord("temp", ob("MDC_TEMP_BODY", 36.8, "Cel"))), verdict.Accepted, "")
	g.signed("valid_weight", ed, enc(scalarRecord("weight", ob("MDC_MASS_BODY_ACTUAL", 71.3, "kg"))), verdict.Accepted, "")
	g.signed("valid_spo2_abnormal_70", ed, enc(scalarRecord("spo2", ob("MDC_PULS_OXIM_SAT_O2", 70, "%"),
		ob("MDC_PULS_OXIM_PULS_RATE", 131, "/min"))), verdict.Accepted, "")
	g.signed("valid_number_encodings", ed, rrec("spo2",
		robs("MDC_PULS_OXIM_SAT_O2", []byte{0xf9, 0x56, 0x10}, "%"), // float16 97
		robs("MDC_PULS_OXIM_PULS_RATE", cFloat32(72.5), "/min")).bytes(), verdict.Accepted, "")
	g.signed("valid_keys_any_order", ed, rmap(rspo2()[3:]).add(rspo2()[0]).add(rspo2()[1]).add(rspo2()[2]).bytes(), verdict.Accepted, "")
	g.signed("valid_bat_0", ed, rspo2().set("bat", cUint(0)).bytes(), verdict.Accepted, "")
	g.signed("valid_no_bat", ed, rspo2().del("bat").bytes(), verdict.Accepted, "")
	g.signed("valid_ts_at_future_limit", ed, rspo2().set("ts", cInt(Now.UnixMilli()+telemetry.MaxSkew.Milliseconds())).bytes(), verdict.Accepted, "")
	g.signed("valid_ts_at_stale_limit", ed, rspo2().set("ts", cInt(Now.UnixMilli()-MaxAge.Milliseconds())).bytes(), verdict.Accepted, "")
	g.signed("valid_ecg_4096_samples", ed, enc(ECGRecord(telemetry.MaxSamples)), verdict.Accepted, "")
	// heads at the boundaries of their shortest forms
	g.signed("valid_seq_24", ed, rspo2().set("seq", cUint(24)).set("bat", cUint(24)).bytes(), verdict.Accepted, "")
	g.signed("valid_seq_256", ed, rspo2().set("seq", cUint(256)).bytes(), verdict.Accepted, "")
	g.signed("valid_seq_65536", ed, rspo2().set("seq", cUint(65536)).bytes(), verdict.Accepted, "")
	g.signed("valid_seq_4294967296", ed, rspo2().set("seq", cUint(1<<32)).bytes(), verdict.Accepted, "")
	// floats of any width, not only the shortest; a positive zero
	g.signed("valid_float_any_width", ed, rrec("spo2",
		robs("MDC_PULS_OXIM_SAT_O2", cFloat64(97), "%"),
		robs("MDC_PULS_OXIM_PULS_RATE", cFloat32(72), "/min")).bytes(), verdict.Accepted, "")
	g.signed("valid_val_zero", ed, rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", []byte{0xf9, 0x00, 0x00}, "%"), spo2Obs()[1]).bytes(), verdict.Accepted, "")
	g.signed("valid_samples_mixed_widths", ed, rrec("ecg", robs("MDC_ECG_ELEC_POTL_II", cArr(cUint(0), cInt(-1),
		[]byte{0xf9, 0x3c, 0x00}, cFloat32(0.5), cFloat64(0.25), []byte{0xf9, 0x00, 0x00}, cFloat64(0)), "mV").set("period_ms", cUint(4))).bytes(), verdict.Accepted, "")
	return nil
}

// tooLargeCases adds a message over the size limit and a record one byte over its limit.
func (g *gen) tooLargeCases() {
	ed := Ed25519
	big := rspo2().set("pad", cBytes(bytes.Repeat([]byte{0}, envelope.MaxMessage))).bytes()
	g.signed("too_large_message", ed, big, verdict.TooLarge, "message of")
	g.cases[len(g.cases)-1].Payload = nil
	g.cases[len(g.cases)-1].Stage = StageEnvelope
	justOver := rspo2().set("pad", cBytes(nil)).bytes()
	justOver = rspo2().set("pad", cBytes(make([]byte, telemetry.MaxPayload+1-len(justOver)-2))).bytes()
	g.signed("too_large_record", ed, justOver, verdict.TooLarge, "record of 65537 bytes")
}

// malformedEnvelopeCases adds messages that are not a well-formed COSE_Sign1 around spo2; good is the build of
// base, the well-formed Ed25519 one.
func (g *gen) malformedEnvelopeCases(spo2 []byte, base sign1, good []byte) {
	ed := Ed25519
	env := g.malformedEnvelope
	env("envelope_empty", []byte{}, "")
	env("envelope_not_cbor", []byte("hello, gateway"), "not a COSE_Sign1")
	env("envelope_json", []byte(`{"v":1,"dev":"dev-00001"}`), "not a COSE_Sign1")
	env("envelope_bare_record", spo2, "not a COSE_Sign1")
	env("envelope_wrong_tag_17", append([]byte{0xd1}, good[1:]...), "not a COSE_Sign1")
	env("envelope_wrong_tag_98", append([]byte{0xd8, 0x62}, good[1:]...), "not a COSE_Sign1")
	env("envelope_tag_18_long_form", append([]byte{0xd8, 0x12}, good[1:]...), "non-minimal")
	env("envelope_array_of_3", cat([]byte{0xd2, 0x83}, cBytes(protAlg(algEdDSA)), []byte{0xa0}, cBytes(spo2)), "not a COSE_Sign1")
	env("envelope_indefinite_array", cat([]byte{0xd2, 0x9f}, good[2:], []byte{0xff}), "not a COSE_Sign1")
	env("envelope_truncated", good[:len(good)/2], "")
	env("envelope_truncated_signature", good[:len(good)-1], "")
	env("envelope_trailing_bytes", append(append([]byte{}, good...), 0x00), "trailing bytes")
	d := base
	d.detached = true
	env("envelope_detached_payload", d.build(), "detached payload")
	env("envelope_payload_text", cat([]byte{0xd2, 0x84}, cBytes(protAlg(algEdDSA)), []byte{0xa0}, cText("hello"), cBytes(make([]byte, 64))), "")
	env("envelope_empty_signature", cat([]byte{0xd2, 0x84}, cBytes(protAlg(algEdDSA)), []byte{0xa0}, cBytes(spo2), cBytes(nil)), "empty signature")
	env("envelope_protected_not_map", sign1{key: Signer(ed), protected: cInt(algEdDSA), payload: spo2}.build(), "header")
	env("envelope_unprotected_not_map", cat([]byte{0xd2, 0x84}, cBytes(protAlg(algEdDSA)), cArr(), cBytes(spo2), cBytes(make([]byte, 64))), "header")
	env("envelope_kid_text", sign1{key: Signer(ed), protected: rmap{{cUint(1), cInt(algEdDSA)}, {cUint(4), cText(DeviceID)}}.bytes(), payload: spo2}.build(), "kid")
	env("envelope_alg_twice", sign1{key: Signer(ed), protected: protAlg(algEdDSA), unprotected: protAlg(algEdDSA), payload: spo2}.build(), "duplicate header")
	env("envelope_dup_protected_label", sign1{key: Signer(ed), protected: rmap{{cUint(1), cInt(algEdDSA)}, {cUint(1), cInt(algEdDSA)}}.bytes(), payload: spo2}.build(), "duplicate header")
	env("envelope_crit", sign1{key: Signer(ed), protected: rmap{{cUint(1), cInt(algEdDSA)}, {cUint(2), cArr(cUint(99))}, {cUint(99), cUint(1)}}.bytes(), payload: spo2}.build(), "critical")
	env("envelope_tag_in_header", sign1{key: Signer(ed), protected: protAlg(algEdDSA), unprotected: rmap{{cUint(99), cat([]byte{0xc1}, cUint(1))}}.bytes(), payload: spo2}.build(), "tag")
}

// nonMinimalEnvelopeCases adds envelopes that differ from good (the build of base) only in a CBOR head written
// longer than its shortest form: otherwise valid and signed, as a lenient parser (go-cose) would accept them.
func (g *gen) nonMinimalEnvelopeCases(spo2 []byte, base sign1, good []byte) {
	ed := Ed25519
	env := g.malformedEnvelope
	const nm = "non-minimal CBOR head"
	offUnprot := 2 + len(cBytes(base.protected))
	offPayload := offUnprot + 1
	offSig := offPayload + len(cBytes(spo2))
	env("envelope_tag_18_2_byte_form", append([]byte{0xd9, 0x00, 0x12}, good[1:]...), nm)
	env("envelope_array_long_form", widen(good, 1), nm)
	env("envelope_untagged_array_long_form", widen(good[1:], 0), nm)
	env("envelope_protected_bstr_long_form", widen(good, 2), nm)
	env("envelope_unprotected_map_long_form", widen(good, offUnprot), nm)
	env("envelope_payload_bstr_long_form", widen(good, offPayload), nm)
	env("envelope_signature_bstr_long_form", widen(good, offSig), nm)
	env("envelope_protected_map_long_form", sign1{key: Signer(ed), protected: widen(base.protected, 0), payload: spo2}.build(), nm)
	env("envelope_alg_label_long_form", sign1{key: Signer(ed), protected: rmap{{wide(0, 1), cInt(algEdDSA)}}.bytes(), payload: spo2}.build(), nm)
	env("envelope_alg_long_form", sign1{key: Signer(ed), protected: rmap{{cUint(1), widen(cInt(algEdDSA), 0)}}.bytes(), payload: spo2}.build(), nm)
	env("envelope_kid_long_form", sign1{key: Signer(ed), protected: rmap{{cUint(1), cInt(algEdDSA)}, {cUint(4), cat(wide(2, uint64(len(DeviceID))), []byte(DeviceID))}}.bytes(), payload: spo2}.build(), nm)
	env("envelope_unprotected_kid_long_form", sign1{key: Signer(ed), protected: protAlg(algEdDSA), payload: spo2,
		unprotected: rmap{{cUint(4), cat(wide(2, uint64(len(DeviceID))), []byte(DeviceID))}}.bytes()}.build(), nm)
	env("envelope_header_value_long_form", sign1{key: Signer(ed), protected: protAlg(algEdDSA), unprotected: rmap{{cUint(99), wide(0, 5)}}.bytes(), payload: spo2}.build(), nm)
}

// malformedRecordCases adds properly signed payloads that are not a well-formed record: not CBOR, the wrong
// shapes, duplicate, unknown or missing keys, values of the wrong type.
func (g *gen) malformedRecordCases(spo2 []byte) {
	rec := g.malformedRecord
	rec("record_empty", []byte{}, "empty")
	rec("record_not_cbor", []byte("hello"), "not a CBOR map")
	rec("record_array", cArr(cUint(1)), "not a CBOR map")
	rec("record_json", []byte(`{"v":1}`), "")
	rec("record_truncated", spo2[:len(spo2)-3], "")
	rec("record_trailing_bytes", append(append([]byte{}, spo2...), 0x01), "extraneous")
	rec("record_duplicate_key", rspo2().add(tk("seq", cUint(43))).bytes(), "duplicate")
	rec("record_duplicate_key_in_obs", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", cUint(97), "%").add(tk("unit", cText("%"))),
		spo2Obs()[1]).bytes(), "duplicate")
	rec("record_indefinite_map", rspo2().indef(), "indefinite")
	rec("record_indefinite_samples", rrec("ecg", robs("MDC_ECG_ELEC_POTL_II", []byte{0x9f, 0x01, 0x02, 0xff}, "mV").set("period_ms", cUint(4))).bytes(), "indefinite")
	rec("record_indefinite_text", rspo2().set("dev", []byte{0x7f, 0x63, 'd', 'e', 'v', 0xff}).bytes(), "indefinite")
	rec("record_unknown_key", rspo2().set("extra", cUint(1)).bytes(), "unknown field")
	rec("record_unknown_key_in_obs", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", cUint(97), "%").set("note", cText("x")), spo2Obs()[1]).bytes(), "unknown field")
	rec("record_int_key", rspo2().add(kv{cUint(1), cUint(1)}).bytes(), "")
	rec("record_bytes_key", rspo2().add(kv{cBytes([]byte("x")), cUint(1)}).bytes(), "")
	rec("record_too_deep", rrec("ecg", robs("MDC_ECG_ELEC_POTL_II", cArr(cArr(cUint(1))), "mV").set("period_ms", cUint(4))).bytes(), "nested level")
	rec("record_missing_v", rspo2().del("v").bytes(), `"v"`)
	rec("record_missing_seq", rspo2().del("seq").bytes(), `"seq"`)
	rec("record_missing_obs", rspo2().del("obs").bytes(), `"obs"`)
	rec("record_missing_val", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", cUint(97), "%").del("val"), spo2Obs()[1]).bytes(), `"val"`)
	rec("record_null_seq", rspo2().set("seq", []byte{0xf6}).bytes(), `"seq"`)
	rec("record_seq_text", rspo2().set("seq", cText("42")).bytes(), "")
	rec("record_seq_negative", rspo2().set("seq", cInt(-1)).bytes(), "")
	rec("record_ts_float", rspo2().set("ts", cFloat64(float64(ts()))).bytes(), "")
	rec("record_dev_bytes", rspo2().set("dev", cBytes([]byte(DeviceID))).bytes(), "")
	rec("record_dev_invalid_utf8", rspo2().set("dev", []byte{0x62, 0xff, 0xfe}).bytes(), "UTF-8")
	rec("record_obs_map", rspo2().set("obs", spo2Obs()[0].bytes()).bytes(), "")
	rec("record_val_text", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", cText("97"), "%"), spo2Obs()[1]).bytes(), "val")
	rec("record_val_bool", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", []byte{0xf5}, "%"), spo2Obs()[1]).bytes(), "val")
	rec("record_val_null", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", []byte{0xf6}, "%"), spo2Obs()[1]).bytes(), "")
	rec("record_val_nan", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", []byte{0xf9, 0x7e, 0x00}, "%"), spo2Obs()[1]).bytes(), "NaN")
	rec("record_val_inf", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", cFloat64(math.Inf(1)), "%"), spo2Obs()[1]).bytes(), "infinite")
	rec("record_val_bignum_tag", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", cat([]byte{0xc2}, cBytes([]byte{97})), "%"), spo2Obs()[1]).bytes(), "tag")
	rec("record_sample_text", rrec("ecg", robs("MDC_ECG_ELEC_POTL_II", cArr(cUint(1), cText("2")), "mV").set("period_ms", cUint(4))).bytes(), "val")
	rec("record_ts_tagged", rspo2().set("ts", cat([]byte{0xc1}, cInt(ts()/1000))).bytes(), "tag")
	rec("record_bat_300", rspo2().set("bat", cUint(300)).bytes(), "")
	rec("record_bat_negative", rspo2().set("bat", cInt(-1)).bytes(), "")
	rec("record_4097_samples", enc(ECGRecord(telemetry.MaxSamples+1)), "max number of elements")
}

// recordEncodingCases adds properly signed records rejected for their encoding alone: non-minimal heads, null
// or undefined values, negative zero.
func (g *gen) recordEncodingCases() {
	rec := g.malformedRecord
	// non-minimal heads anywhere in the record
	rec("record_nonminimal_seq_5", rspo2().set("seq", []byte{0x18, 0x05}).bytes(), "non-minimal CBOR head at byte")
	rec("record_nonminimal_seq_42", rspo2().set("seq", wide(0, seq)).bytes(), "non-minimal CBOR head at byte")
	rec("record_nonminimal_seq_uint64", rspo2().set("seq", widen(widen(wide(0, seq), 0), 0)).bytes(), "non-minimal CBOR head at byte")
	rec("record_nonminimal_bat", rspo2().set("bat", wide(0, bat)).bytes(), "non-minimal CBOR head at byte")
	rec("record_nonminimal_map", widen(rspo2().bytes(), 0), "non-minimal CBOR head at byte 0")
	rec("record_nonminimal_obs_array", rspo2().set("obs", widen(obsArr(spo2Obs()...), 0)).bytes(), "non-minimal CBOR head at byte")
	rec("record_nonminimal_obs_map", rspo2().set("obs", cArr(widen(spo2Obs()[0].bytes(), 0), spo2Obs()[1].bytes())).bytes(), "non-minimal CBOR head at byte")
	rec("record_nonminimal_text", rspo2().set("dev", cat(wide(3, uint64(len(DeviceID))), []byte(DeviceID))).bytes(), "non-minimal CBOR head at byte")
	rec("record_nonminimal_key", rspo2().del("seq").add(kv{cat(wide(3, 3), []byte("seq")), cUint(seq)}).bytes(), "non-minimal CBOR head at byte")
	rec("record_nonminimal_val", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", wide(0, 97), "%"), spo2Obs()[1]).bytes(), "non-minimal CBOR head")
	rec("record_nonminimal_val_negative", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", []byte{0x38, 0x00}, "%"), spo2Obs()[1]).bytes(), "non-minimal CBOR head")
	rec("record_nonminimal_samples_array", rrec("ecg", robs("MDC_ECG_ELEC_POTL_II", widen(cArr(cFloat32(0.5), cFloat32(0.25)), 0), "mV").set("period_ms", cUint(4))).bytes(), "non-minimal CBOR head")
	rec("record_nonminimal_sample", rrec("ecg", robs("MDC_ECG_ELEC_POTL_II", cArr(cFloat32(0.5), wide(0, 1)), "mV").set("period_ms", cUint(4))).bytes(), "non-minimal CBOR head")
	rec("record_nonminimal_period_ms", rrec("ecg", robs("MDC_ECG_ELEC_POTL_II", cArr(cFloat32(0.5)), "mV").set("period_ms", wide(0, 4))).bytes(), "non-minimal CBOR head at byte")
	// null and undefined: an optional key is left out, never null
	rec("record_bat_null", rspo2().set("bat", []byte{0xf6}).bytes(), `"bat" is null`)
	rec("record_bat_undefined", rspo2().set("bat", []byte{0xf7}).bytes(), `"bat" is undefined`)
	rec("record_period_ms_null", rrec("ecg", robs("MDC_ECG_ELEC_POTL_II", cArr(cFloat32(0.5)), "mV").set("period_ms", []byte{0xf6})).bytes(), `"period_ms" is null`)
	rec("record_period_ms_undefined", rrec("ecg", robs("MDC_ECG_ELEC_POTL_II", cArr(cFloat32(0.5)), "mV").set("period_ms", []byte{0xf7})).bytes(), `"period_ms" is undefined`)
	rec("record_seq_undefined", rspo2().set("seq", []byte{0xf7}).bytes(), `"seq" is undefined`)
	rec("record_code_null", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", cUint(97), "%").set("code", []byte{0xf6}), spo2Obs()[1]).bytes(), `"code" is null`)
	rec("record_obs_null_item", rspo2().set("obs", cArr(spo2Obs()[0].bytes(), []byte{0xf6})).bytes(), `null inside "obs"`)
	rec("record_val_undefined", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", []byte{0xf7}, "%"), spo2Obs()[1]).bytes(), "val")
	// negative zero, in any width, as a value or a sample
	rec("record_val_negative_zero_f16", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", []byte{0xf9, 0x80, 0x00}, "%"), spo2Obs()[1]).bytes(), "negative zero")
	rec("record_val_negative_zero_f32", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", cFloat32(float32(math.Copysign(0, -1))), "%"), spo2Obs()[1]).bytes(), "negative zero")
	rec("record_val_negative_zero_f64", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", cFloat64(math.Copysign(0, -1)), "%"), spo2Obs()[1]).bytes(), "negative zero")
	rec("record_sample_negative_zero_f32", rrec("ecg", robs("MDC_ECG_ELEC_POTL_II", cArr(cFloat32(0.5), cFloat32(float32(math.Copysign(0, -1)))), "mV").set("period_ms", cUint(4))).bytes(), "negative zero")
	rec("record_sample_negative_zero_f16", rrec("ecg", robs("MDC_ECG_ELEC_POTL_II", cArr(cFloat32(0.5), []byte{0xf9, 0x80, 0x00}), "mV").set("period_ms", cUint(4))).bytes(), "negative zero")
}

// badSignatureCases adds, for each key, messages whose signature, alg or kid does not check out; good is the
// Ed25519 envelope around spo2.
func (g *gen) badSignatureCases(spo2, good []byte) {
	flip := func(b []byte, i int) []byte { out := append([]byte{}, b...); out[i] ^= 0x01; return out }
	for _, key := range []string{P256, Ed25519} {
		alg := map[string]string{P256: "es256", Ed25519: "eddsa"}[key]
		msg := sign1{key: Signer(key), protected: protAlgKid(algOf(key), DeviceID), payload: spo2}.build()
		bad := func(name string, m []byte, detail string) {
			g.add(Case{Name: name, Key: key, Msg: m, Payload: spo2, Verdict: verdict.BadSignature, Detail: detail})
		}
		bad("bad_signature_"+alg+"_flipped_signature_byte", flip(msg, len(msg)-5), envelope.DetailSignature)
		i := bytes.Index(msg, spo2) + bytes.Index(spo2, cText("seq")) + 4
		bad("bad_signature_"+alg+"_flipped_payload_byte", flip(msg, i), envelope.DetailSignature)
		g.cases[len(g.cases)-1].Payload = flip(spo2, i-bytes.Index(msg, spo2))
		other := "other-" + key
		bad("bad_signature_"+alg+"_wrong_key", sign1{key: Signer(other), protected: protAlgKid(algOf(key), DeviceID), payload: spo2}.build(), envelope.DetailSignature)
		bad("bad_signature_"+alg+"_alg_missing", sign1{key: Signer(key), protected: rmap{{cUint(4), cBytes([]byte(DeviceID))}}.bytes(), payload: spo2}.build(), envelope.DetailAlg)
		bad("bad_signature_"+alg+"_no_protected_header", sign1{key: Signer(key), unprotected: protAlgKid(algOf(key), DeviceID), payload: spo2}.build(), envelope.DetailAlg)
		bad("bad_signature_"+alg+"_alg_text", sign1{key: Signer(key), protected: rmap{{cUint(1), cText("ES256")}}.bytes(), payload: spo2}.build(), envelope.DetailAlg)
		bad("bad_signature_"+alg+"_kid_mismatch", sign1{key: Signer(key), protected: protAlgKid(algOf(key), "dev-00002"), payload: spo2}.build(), envelope.DetailKid)
		bad("bad_signature_"+alg+"_kid_unprotected_mismatch", sign1{key: Signer(key), protected: protAlg(algOf(key)),
			unprotected: rmap{{cUint(4), cBytes([]byte("dev-0000"))}}.bytes(), payload: spo2}.build(), envelope.DetailKid)
		bad("bad_signature_"+alg+"_empty_kid", sign1{key: Signer(key), protected: protAlgKid(algOf(key), ""), payload: spo2}.build(), envelope.DetailKid)
	}
	badAlg := func(name, key string, alg int64) {
		g.add(Case{Name: name, Key: key, Payload: spo2, Verdict: verdict.BadSignature, Detail: envelope.DetailAlg,
			Msg: sign1{key: Signer(key), protected: protAlgKid(alg, DeviceID), payload: spo2}.build()})
	}
	badAlg("bad_signature_es512_with_p256_key", P256, algES512)
	badAlg("bad_signature_ps256_with_p256_key", P256, algPS256)
	badAlg("bad_signature_eddsa_alg_with_p256_key", P256, algEdDSA)
	badAlg("bad_signature_es256_alg_with_ed25519_key", Ed25519, algES256)
	// an Ed25519 message checked against the P-256 device key
	g.add(Case{Name: "bad_signature_other_key_type", Key: P256, Msg: good, Payload: spo2, Verdict: verdict.BadSignature, Detail: envelope.DetailAlg})
	g.cases[len(g.cases)-1].Randomized = false
}

// schemaCases adds well-formed records that break the schema: version, kind, observations, units, ranges.
func (g *gen) schemaCases() {
	ed := Ed25519
	sch := func(name string, payload []byte, detail string) { g.signed(name, ed, payload, verdict.Schema, detail) }
	sch("schema_version_2", rspo2().set("v", cUint(2)).bytes(), "unsupported version 2")
	sch("schema_version_0", rspo2().set("v", cUint(0)).bytes(), "unsupported version 0")
	sch("schema_unknown_kind", rrec("coffee", spo2Obs()...).bytes(), `unknown kind "coffee"`)
	sch("schema_no_observations", rspo2().set("obs", cArr()).bytes(), "spo2: no observations")
	many := make([]rmap, telemetry.MaxObservations+1)
	for i := range many {
		many[i] = robs("MDC_PULS_OXIM_SAT_O2", cUint(97), "%")
	}
	sch("schema_65_observations", rrec("spo2", many...).bytes(), "65 observations, max 64")
	sch("schema_missing_required", rrec("spo2", spo2Obs()[0]).bytes(), "spo2: missing MDC_PULS_OXIM_PULS_RATE")
	sch("schema_unknown_code", rrec("spo2", append(spo2Obs(), robs("MDC_TEMP_BODY", cFloat64(36.6), "Cel"))...).bytes(), `spo2: unknown code "MDC_TEMP_BODY"`)
	sch("schema_duplicate_code", rrec("spo2", append(spo2Obs(), spo2Obs()[0])...).bytes(), "spo2: duplicate code MDC_PULS_OXIM_SAT_O2")
	sch("schema_wrong_unit", rrec("temp", robs("MDC_TEMP_BODY", cFloat64(98.6), "[degF]")).bytes(), `temp: MDC_TEMP_BODY unit "[degF]", want "Cel"`)
	sch("schema_bp_sys_400", enc(scalarRecord("bp", ob("MDC_PRESS_BLD_NONINV_SYS", 400, "mm[Hg]"),
		ob("MDC_PRESS_BLD_NONINV_DIA", 82, "mm[Hg]"), ob("MDC_PRESS_BLD_NONINV_MEAN", 97, "mm[Hg]"))), "bp: MDC_PRESS_BLD_NONINV_SYS 400 mm[Hg] outside 20..300")
	sch("schema_bp_sys_not_greater", enc(scalarRecord("bp", ob("MDC_PRESS_BLD_NONINV_SYS", 80, "mm[Hg]"),
		ob("MDC_PRESS_BLD_NONINV_DIA", 90, "mm[Hg]"), ob("MDC_PRESS_BLD_NONINV_MEAN", 85, "mm[Hg]"))), "bp: MDC_PRESS_BLD_NONINV_SYS 80 not greater than MDC_PRESS_BLD_NONINV_DIA 90")
	sch("schema_spo2_101", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", cUint(101), "%"), spo2Obs()[1]).bytes(), "spo2: MDC_PULS_OXIM_SAT_O2 101 % outside 0..100")
	sch("schema_spo2_negative", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", cInt(-1), "%"), spo2Obs()[1]).bytes(), "outside 0..100")
	sch("schema_pulse_rate_10", rrec("spo2", spo2Obs()[0], robs("MDC_PULS_OXIM_PULS_RATE", cUint(10), "/min")).bytes(), "spo2: MDC_PULS_OXIM_PULS_RATE 10 /min outside 20..350")
	sch("schema_glucose_5000", enc(scalarRecord("glucose", ob("MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD", 5000, "mg/dL"))), "outside 10..1000")
	sch("schema_temp_60", enc(scalarRecord("temp", ob("MDC_TEMP_BODY", 60, "Cel"))), "temp: MDC_TEMP_BODY 60 Cel outside 25..45")
	sch("schema_weight_0", enc(scalarRecord("weight", ob("MDC_MASS_BODY_ACTUAL", 0, "kg"))), "outside 0.5..500")
	sch("schema_bat_101", rspo2().set("bat", cUint(101)).bytes(), "bat 101 outside 0..100")
	sch("schema_scalar_as_waveform", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", cArr(cUint(97), cUint(96)), "%").set("period_ms", cUint(1000)), spo2Obs()[1]).bytes(), "takes one value, got samples")
	sch("schema_period_on_scalar", rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", cUint(97), "%").set("period_ms", cUint(1000)), spo2Obs()[1]).bytes(), "period_ms without samples")
	sch("schema_waveform_as_scalar", rrec("ecg", robs("MDC_ECG_ELEC_POTL_II", cFloat64(0.5), "mV").set("period_ms", cUint(4))).bytes(), "needs samples")
	sch("schema_samples_without_period", rrec("ecg", robs("MDC_ECG_ELEC_POTL_II", cArr(cFloat64(0.5), cFloat64(0.6)), "mV")).bytes(), "samples without period_ms")
	sch("schema_period_ms_0", rrec("ecg", robs("MDC_ECG_ELEC_POTL_II", cArr(cFloat64(0.5)), "mV").set("period_ms", cUint(0))).bytes(), "period_ms 0")
	sch("schema_no_samples", rrec("ecg", robs("MDC_ECG_ELEC_POTL_II", cArr(), "mV").set("period_ms", cUint(4))).bytes(), "has no samples")
	sch("schema_sample_out_of_range", rrec("ecg", robs("MDC_ECG_ELEC_POTL_II", cArr(cFloat64(0.5), cFloat64(-12.5)), "mV").set("period_ms", cUint(4))).bytes(), "ecg: MDC_ECG_ELEC_POTL_II sample 1: -12.5 mV outside -10..10")
	sch("schema_empty_kind", rrec("", spo2Obs()...).bytes(), `unknown kind ""`)
	sch("schema_long_kind", rrec(strings.Repeat("k", 1000), spo2Obs()...).bytes(), `unknown kind "kkkk`)
}

// timeCases adds records whose timestamp is too far ahead or too old, some of which break the schema too.
func (g *gen) timeCases() {
	ed := Ed25519
	g.signed("future_6_minutes", ed, rspo2().set("ts", cInt(Now.UnixMilli()+6*60_000)).bytes(), verdict.Future, "ahead")
	g.signed("future_es256", P256, rspo2().set("ts", cInt(Now.UnixMilli()+24*3600_000)).bytes(), verdict.Future, "ahead")
	g.signed("stale_8_days", ed, rspo2().set("ts", cInt(Now.UnixMilli()-8*24*3600_000)).bytes(), verdict.Stale, "older than")
	g.signed("stale_epoch_0", ed, rspo2().set("ts", cInt(0)).bytes(), verdict.Stale, "older than")
	g.signed("stale_ts_min_int64", ed, rspo2().set("ts", cInt(math.MinInt64)).bytes(), verdict.Stale, "older than")
	g.signed("future_ts_max_int64", ed, rspo2().set("ts", cInt(math.MaxInt64)).bytes(), verdict.Future, "ahead")
	// Time comes before schema (docs/protocol.md section 4): a record that
	// fails both is judged on its time, by the gateway as by Check.
	g.signed("stale_and_unknown_kind", ed, rrec("coffee", spo2Obs()...).set("ts", cInt(Now.UnixMilli()-8*24*3600_000)).bytes(), verdict.Stale, "older than")
	g.signed("future_and_spo2_101", ed, rrec("spo2", robs("MDC_PULS_OXIM_SAT_O2", cUint(101), "%"), spo2Obs()[1]).set("ts", cInt(Now.UnixMilli()+6*60_000)).bytes(), verdict.Future, "ahead")

}
