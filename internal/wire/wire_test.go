package wire_test

import (
	"bytes"
	"encoding/hex"
	"reflect"
	"strings"
	"testing"

	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// h decodes hex written in pieces, spaces allowed, so that a table can show
// a message key by key. The table is constant: bad hex is a bug in it.
func h(pieces ...string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(strings.Join(pieces, ""), " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

func ptr[T any](v T) *T { return &v }

// vitals is a record with every kind of value: scalars (as float16), a
// waveform (float64 and float16 samples), period_ms and bat.
var vitals = telemetry.Record{V: 1, Dev: "dev-00042", Seq: 123456, TS: 1767225600123, Kind: "vitals", Bat: ptr(uint8(87)),
	Obs: []telemetry.Observation{
		{Code: "8867-4", Val: telemetry.Scalar(72), Unit: "/min"},
		{Code: "59408-5", Val: telemetry.Scalar(97.5), Unit: "%"},
		{Code: "ecg", Val: telemetry.Waveform([]float64{0.1, -0.25, 1.5}), Unit: "mV", PeriodMS: ptr(uint64(20))},
	}}

// vitalsCBOR is vitals as a device signs it (deterministic CBOR).
const vitalsCBOR = "a7 6176 01 627473 1b0000019b76daa87b 63626174 1857 63646576 69 6465762d3030303432" +
	" 636f6273 83" +
	" a3 6376616c f95480 64636f6465 66 383836372d34 64756e6974 64 2f6d696e" +
	" a3 6376616c f95618 64636f6465 67 35393430382d35 64756e6974 61 25" +
	" a4 6376616c 83 fb3fb999999999999a f9b400 f93e00 64636f6465 63 656367 64756e6974 62 6d56 69706572696f645f6d73 14" +
	" 63736571 1a0001e240 646b696e64 66 766974616c73"

var spo2 = telemetry.Record{V: 1, Dev: "d", Seq: 7, TS: 1700000000000, Kind: "spo2",
	Obs: []telemetry.Observation{{Code: "MDC_PULS_OXIM_SAT_O2", Val: telemetry.Scalar(97), Unit: "%"}}}

const spo2CBOR = "a6 6176 01 627473 1b0000018bcfe56800 63646576 61 64 636f6273 81" +
	" a3 6376616c f95610 64636f6465 74 4d44435f50554c535f4f58494d5f5341545f4f32 64756e6974 61 25" +
	" 63736571 07 646b696e64 64 73706f32"

// message is one row of the byte table: the bytes of a cloud message and
// what they mean. Rows with an input feed the encoding tests; every row
// feeds the decoding tests.
type message struct {
	name   string
	in     *wire.Accepted // nil: a message the gateway never writes
	format wire.Format
	bytes  []byte
	want   *wire.Message // decoded; nil when decoding fails
	err    string        // the decoding error contains this
}

func table() []message {
	vitalsIn := &wire.Accepted{Site: "site1", GW: "gw1", RX: 1767225601000, Rec: &vitals, Raw: h(vitalsCBOR), Sig: h("d28443a10126")}
	spo2In := &wire.Accepted{Site: "s", GW: "g", RX: 1700000000500, Rec: &spo2, Raw: h(spo2CBOR), Sig: []byte{1, 2}}
	vitalsMsg := &wire.Message{V: 1, ID: "dev-00042:123456", Site: "site1", GW: "gw1", RX: 1767225601000, Rec: vitals, Sig: []byte{0xd2, 0x84, 0x43, 0xa1, 0x01, 0x26}}
	spo2Msg := &wire.Message{V: 1, ID: "d:7", Site: "s", GW: "g", RX: 1700000000500, Rec: spo2, Sig: []byte{1, 2}}
	belowIn, belowMsg := *spo2In, *spo2Msg
	belowIn.FWBelowMin, belowMsg.FWBelowMin = true, true
	clockIn, clockMsg := *spo2In, *spo2Msg
	clockIn.ClockUntrusted, clockMsg.ClockUntrusted = true, true
	text := func(s string) []byte { return []byte(s) }
	return []message{
		{name: "cbor vitals", in: vitalsIn, format: wire.CBOR, want: vitalsMsg, bytes: h(
			"a7", // map of 7, keys in deterministic order
			"6176 01",
			"626777 63 677731",
			"626964 70 6465762d30303034323a313233343536",
			"627278 1b 0000019b76daabe8",
			"63726563", vitalsCBOR, // the device's bytes
			"63736967 46 d28443a10126",
			"6473697465 65 7369746531")},
		{name: "cbor spo2", in: spo2In, format: wire.CBOR, want: spo2Msg, bytes: h(
			"a7 6176 01 626777 61 67 626964 63 643a37 627278 1b 0000018bcfe569f4",
			"63726563", spo2CBOR,
			"63736967 42 0102 6473697465 61 73")},
		{name: "empty format is cbor", in: spo2In, format: "", want: spo2Msg, bytes: h(
			"a7 6176 01 626777 61 67 626964 63 643a37 627278 1b 0000018bcfe569f4",
			"63726563", spo2CBOR,
			"63736967 42 0102 6473697465 61 73")},
		{name: "json vitals", in: vitalsIn, format: wire.JSON, want: vitalsMsg, bytes: text(
			`{"v":1,"id":"dev-00042:123456","site":"site1","gw":"gw1","rx":1767225601000,` +
				`"rec":{"v":1,"dev":"dev-00042","seq":123456,"ts":1767225600123,"kind":"vitals","obs":[` +
				`{"code":"8867-4","val":72,"unit":"/min"},{"code":"59408-5","val":97.5,"unit":"%"},` +
				`{"code":"ecg","val":[0.1,-0.25,1.5],"unit":"mV","period_ms":20}],"bat":87},"sig":"0oRDoQEm"}`)},
		{name: "json spo2", in: spo2In, format: wire.JSON, want: spo2Msg, bytes: text(
			`{"v":1,"id":"d:7","site":"s","gw":"g","rx":1700000000500,` +
				`"rec":{"v":1,"dev":"d","seq":7,"ts":1700000000000,"kind":"spo2","obs":[{"code":"MDC_PULS_OXIM_SAT_O2","val":97,"unit":"%"}]},"sig":"AQI="}`)},
		{name: "cbor firmware below minimum", in: &belowIn, format: wire.CBOR, want: &belowMsg, bytes: h(
			"a8 6176 01 626777 61 67 626964 63 643a37 627278 1b 0000018bcfe569f4",
			"63726563", spo2CBOR,
			"63736967 42 0102 6473697465 61 73",
			"6c 66775f62656c6f775f6d696e f5")}, // "fw_below_min": true, last of the keys
		{name: "json firmware below minimum", in: &belowIn, format: wire.JSON, want: &belowMsg, bytes: text(
			`{"v":1,"id":"d:7","site":"s","gw":"g","rx":1700000000500,` +
				`"rec":{"v":1,"dev":"d","seq":7,"ts":1700000000000,"kind":"spo2","obs":[{"code":"MDC_PULS_OXIM_SAT_O2","val":97,"unit":"%"}]},"sig":"AQI=","fw_below_min":true}`)},
		{name: "cbor clock untrusted", in: &clockIn, format: wire.CBOR, want: &clockMsg, bytes: h(
			"a8 6176 01 626777 61 67 626964 63 643a37 627278 1b 0000018bcfe569f4",
			"63726563", spo2CBOR,
			"63736967 42 0102 6473697465 61 73",
			"6f 636c6f636b5f756e74727573746564 f5")}, // "clock_untrusted": true
		{name: "json clock untrusted", in: &clockIn, format: wire.JSON, want: &clockMsg, bytes: text(
			`{"v":1,"id":"d:7","site":"s","gw":"g","rx":1700000000500,` +
				`"rec":{"v":1,"dev":"d","seq":7,"ts":1700000000000,"kind":"spo2","obs":[{"code":"MDC_PULS_OXIM_SAT_O2","val":97,"unit":"%"}]},"sig":"AQI=","clock_untrusted":true}`)},

		{name: "json after whitespace", want: spo2Msg, bytes: text(
			" \r\n\t" + `{"v":1,"id":"d:7","site":"s","gw":"g","rx":1700000000500,` +
				`"rec":{"v":1,"dev":"d","seq":7,"ts":1700000000000,"kind":"spo2","obs":[{"code":"MDC_PULS_OXIM_SAT_O2","val":97,"unit":"%"}]},"sig":"AQI="}`)},
		{name: "unknown key ignored", want: &wire.Message{V: 1, ID: "d:7", Sig: []byte{1}}, bytes: h(
			"a4 6176 01 626964 63 643a37 63736967 41 01 656c61746572 f5")},
		{name: "version 2", err: "message version 2, want 1", bytes: h("a1 6176 02")},
		{name: "no version", err: "message version 0, want 1", bytes: h("a2 626964 63 643a37 63736967 41 01")},
		{name: "json version 2", err: "message version 2, want 1", bytes: text(`{"v":2,"id":"d:7","sig":"AQ=="}`)},
		{name: "no sig", err: "message lacks id or sig", bytes: h("a2 6176 01 626964 63 643a37")},
		{name: "no id", err: "message lacks id or sig", bytes: h("a2 6176 01 63736967 41 01")},
		{name: "duplicate key", err: "decode cbor message", bytes: h("a2 6176 01 6176 01")},
		{name: "indefinite length", err: "decode cbor message", bytes: h("bf 6176 01 ff")},
		{name: "tag", err: "decode cbor message", bytes: h("d818 a1 6176 01")},
		{name: "not a map", err: "decode cbor message", bytes: h("83 01 02 03")},
		{name: "empty", err: "decode cbor message", bytes: h("")},
		{name: "truncated json", err: "decode json message", bytes: text(`{"v":1,"id":`)},
		{name: "json sig not base64", err: "decode json message", bytes: text(`{"v":1,"id":"d:7","sig":"%%"}`)},
		{name: "too large", err: "limit", bytes: make([]byte, wire.MaxMessage+1)},
	}
}

func TestEncode(t *testing.T) {
	for _, tc := range table() {
		if tc.in == nil {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			want := tc.bytes
			got, err := wire.Encode(tc.format, tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("Encode\n got %x\nwant %x", got, want)
			}
			entry, err := wire.Entry(tc.format, tc.in)
			if err != nil {
				t.Fatal(err)
			}
			topic, payload, err := wire.Unframe(entry)
			if err != nil {
				t.Fatal(err)
			}
			if wantTopic := "telemetry/" + tc.in.Site + "/" + tc.in.Rec.Dev + "/" + tc.in.Rec.Kind; topic != wantTopic {
				t.Errorf("Entry topic %q, want %q", topic, wantTopic)
			}
			if !bytes.Equal(payload, want) {
				t.Errorf("Entry payload\n got %x\nwant %x", payload, want)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	for _, tc := range table() {
		t.Run(tc.name, func(t *testing.T) {
			got, err := wire.Decode(tc.bytes)
			if tc.want == nil {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Decode error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Decode\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestEncodeUnknownFormat(t *testing.T) {
	in := &wire.Accepted{Site: "s", GW: "g", Rec: &spo2, Raw: []byte{0xa0}, Sig: []byte{1}}
	for _, f := range []func() ([]byte, error){
		func() ([]byte, error) { return wire.Encode("xml", in) },
		func() ([]byte, error) { return wire.Entry("xml", in) },
	} {
		if _, err := f(); err == nil || !strings.Contains(err.Error(), `format "xml": want cbor or json`) {
			t.Fatalf("error %v, want the format named", err)
		}
	}
}

func TestTopicAndID(t *testing.T) {
	if got := wire.Topic("site1", "dev-1", "spo2"); got != "telemetry/site1/dev-1/spo2" {
		t.Errorf("Topic = %q", got)
	}
	if got := wire.ID("dev-1", 18446744073709551615); got != "dev-1:18446744073709551615" {
		t.Errorf("ID = %q", got)
	}
}

func TestFrame(t *testing.T) {
	for _, tc := range []struct {
		name, topic string
		payload     []byte
	}{
		{"cbor", "telemetry/site1/dev-1/vitals", []byte{0xa1, 0x00, 0x01}},
		{"empty payload", "t", nil},
		{"payload with NULs", "a/b", []byte{0, 0, 'x', 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic, payload, err := wire.Unframe(wire.Frame(tc.topic, tc.payload))
			if err != nil || topic != tc.topic || !bytes.Equal(payload, tc.payload) {
				t.Fatalf("round trip = %q, %x, %v", topic, payload, err)
			}
		})
	}
	for _, tc := range []struct {
		name, data, err string
	}{
		{"no separator", "telemetry/x", "no topic separator"},
		{"empty topic", "\x00payload", "empty topic"},
		{"wildcard +", "a/+/b\x00p", "wildcard"},
		{"wildcard #", "a/#\x00p", "wildcard"},
		{"not UTF-8", "a\xff\x00p", "not UTF-8"},
		{"too long", strings.Repeat("a", 65536) + "\x00", "longer than 65535"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := wire.Unframe([]byte(tc.data)); err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Unframe error %v, want one containing %q", err, tc.err)
			}
		})
	}
}
