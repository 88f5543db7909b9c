package update

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/veraison/go-cose"

	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// The byte-exact vector of docs/updates.md: the Ed25519 key whose seed is the bytes 00 01 .. 1f signs
// vectorManifest (EdDSA signatures are deterministic).
const vectorHex = "d28443a10127a058a1aa61760163736571036473697a6514656d6f64656c656f78692d31666469676573745820" +
	"cc363af04405c655d97a43ea407169410e6eafb58b1f079adbd7010f10ab6eb06676656e646f7269566974616c47617465" +
	"677461726765747382696f78692d3030303031696f78692d30303030326776657273696f6e65312e322e30696e6f745f61" +
	"667465721b000001a2ce8bd4006b6d696e5f62617474657279181e5840e0318cb2ef2f24ba80db0c4a7ec8bba887e84daa" +
	"3bcea9c25c601fa1548cdc929122a3ac085fde1a03e31f12a1dc4ac87ebfb1194bb49dc1b668ded1dddb590d"

// vectorImage is the image of the vector.
var vectorImage = []byte("VitalGate test image")

func vectorKey() ed25519.PrivateKey {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(i)
	}
	return ed25519.NewKeyFromSeed(seed)
}

func vectorManifest() *Manifest {
	d := sha256.Sum256(vectorImage)
	return &Manifest{V: 1, Vendor: "VitalGate", Model: "oxi-1", Version: "1.2.0", Seq: 3, Digest: d[:],
		Size: uint64(len(vectorImage)), NotAfter: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli(),
		MinBattery: 30, Targets: []string{"oxi-00001", "oxi-00002"}}
}

// vectorNow is a time at which the vector is valid.
var vectorNow = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

func TestVector(t *testing.T) {
	key := vectorKey()
	got, err := Sign(key, vectorManifest())
	if err != nil {
		t.Fatal(err)
	}
	if h := hex.EncodeToString(got); h != vectorHex {
		t.Fatalf("Sign = %s\nwant   %s", h, vectorHex)
	}
	want, _ := hex.DecodeString(vectorHex)
	// go-cose, an independent implementation, verifies the vector and reads the same protected alg.
	var msg cose.Sign1Message
	if err := msg.UnmarshalCBOR(want); err != nil {
		t.Fatal(err)
	}
	v, err := cose.NewVerifier(cose.AlgorithmEdDSA, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	if err := msg.Verify(nil, v); err != nil {
		t.Fatalf("go-cose: %v", err)
	}
	if alg, err := msg.Headers.Protected.Algorithm(); err != nil || alg != cose.AlgorithmEdDSA {
		t.Fatalf("alg %v, %v", alg, err)
	}
	m, err := Parse(want, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m, vectorManifest()) {
		t.Fatalf("Parse = %+v", m)
	}
	if err := m.Check(DeviceState{Model: "oxi-1", InstalledSeq: 2, Battery: 30, ID: "oxi-00002", Now: vectorNow}); err != nil {
		t.Fatal(err)
	}
	if err := CheckImage(m, vectorImage); err != nil {
		t.Fatal(err)
	}
}

// TestP256 signs with a P-256 key (ES256, randomized signatures): go-cose verifies and Parse reads the manifest;
// the same message refused with the key of an Ed25519 pair or another P-256 key is forged.
func TestP256(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	msg, err := Sign(key, vectorManifest())
	if err != nil {
		t.Fatal(err)
	}
	var cm cose.Sign1Message
	if err := cm.UnmarshalCBOR(msg); err != nil {
		t.Fatal(err)
	}
	v, _ := cose.NewVerifier(cose.AlgorithmES256, key.Public())
	if err := cm.Verify(nil, v); err != nil {
		t.Fatalf("go-cose: %v", err)
	}
	if _, err := Parse(msg, key.Public()); err != nil {
		t.Fatal(err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for name, pub := range map[string]crypto.PublicKey{"other P-256": other.Public(), "Ed25519": vectorKey().Public()} {
		if _, err := Parse(msg, pub); ReasonOf(err) != ReasonForged {
			t.Errorf("%s: %v, want forged", name, err)
		}
	}
	if _, err := Parse(msg, "not a key"); err == nil || ReasonOf(err) != "" {
		t.Errorf("a string key: %v, want a plain error", err)
	}
}

// signPayload signs raw payload bytes the way Sign does.
func signPayload(t *testing.T, payload []byte) []byte {
	t.Helper()
	msg, err := envelope.Sign(vectorKey(), "", payload)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// encodeMap encodes m deterministically.
func encodeMap(t *testing.T, m map[string]any) []byte {
	t.Helper()
	b, err := encMode.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fields is the vector manifest as a generic map, to break one field at a time.
func fields() map[string]any {
	m := vectorManifest()
	return map[string]any{"v": 1, "vendor": m.Vendor, "model": m.Model, "version": m.Version, "seq": m.Seq,
		"digest": m.Digest, "size": m.Size, "not_after": m.NotAfter, "min_battery": 30, "targets": m.Targets}
}

func TestParseRefusals(t *testing.T) {
	key := vectorKey()
	good, _ := hex.DecodeString(vectorHex)
	tampered := bytes.Clone(good)
	tampered[bytes.Index(tampered, []byte("1.2.0"))+2] = '3' // version 1.3.0: signature no longer verifies
	with := func(k string, v any) []byte {
		f := fields()
		if v == nil {
			delete(f, k)
		} else {
			f[k] = v
		}
		return signPayload(t, encodeMap(t, f))
	}
	unsorted, _ := cbor.EncOptions{Sort: cbor.SortNone}.EncMode()
	type alphabetical struct { // every key, in alphabetical order, not the deterministic (length-first) one
		Digest     []byte   `cbor:"digest"`
		MinBattery int      `cbor:"min_battery"`
		Model      string   `cbor:"model"`
		NotAfter   int64    `cbor:"not_after"`
		Seq        uint64   `cbor:"seq"`
		Size       uint64   `cbor:"size"`
		Targets    []string `cbor:"targets"`
		V          int      `cbor:"v"`
		Vendor     string   `cbor:"vendor"`
		Version    string   `cbor:"version"`
	}
	vm := vectorManifest()
	unsortedPayload, _ := unsorted.Marshal(alphabetical{vm.Digest, vm.MinBattery, vm.Model, vm.NotAfter, vm.Seq,
		vm.Size, vm.Targets, vm.V, vm.Vendor, vm.Version})
	nonMinimal := encodeMap(t, fields())
	nonMinimal = bytes.Replace(nonMinimal, []byte{0x63, 's', 'e', 'q', 0x03}, []byte{0x63, 's', 'e', 'q', 0x18, 0x03}, 1)
	devKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	byDevice, _ := envelope.Sign(devKey, "oxi-00001", encodeMap(t, fields()))
	tests := []struct {
		name, reason, detail string
		msg                  []byte
	}{
		{"tampered payload", ReasonForged, envelope.DetailSignature, tampered},
		{"signed by a device key", ReasonForged, "", byDevice},
		{"empty", ReasonMalformed, "", nil},
		{"not COSE", ReasonMalformed, "", []byte("hello")},
		{"oversized", ReasonMalformed, "too_large", make([]byte, envelope.MaxMessage+1)},
		{"payload not a map", ReasonMalformed, "not a CBOR map", signPayload(t, []byte{0x01})},
		{"missing seq", ReasonMalformed, `missing key "seq"`, with("seq", nil)},
		{"unknown key", ReasonMalformed, "unknown field", with("colour", "blue")},
		{"text digest", ReasonMalformed, "", with("digest", "cc36")},
		{"short digest", ReasonMalformed, "digest of 31 bytes", with("digest", make([]byte, 31))},
		{"seq 0", ReasonMalformed, "seq 0", with("seq", 0)},
		{"negative seq", ReasonMalformed, "", with("seq", -3)},
		{"size 0", ReasonMalformed, "size 0", with("size", 0)},
		{"v 2", ReasonMalformed, "v 2", with("v", 2)},
		{"bad version", ReasonMalformed, "semantic version", with("version", "v1.2")},
		{"model path", ReasonMalformed, "model", with("model", "../x")},
		{"empty vendor", ReasonMalformed, "vendor", with("vendor", "")},
		{"battery 101", ReasonMalformed, "min_battery 101", with("min_battery", 101)},
		{"battery null", ReasonMalformed, "deterministic", with("min_battery", cbor.RawMessage{0xf6})},
		{"empty targets", ReasonMalformed, "targets is empty", with("targets", []string{})},
		{"bad target", ReasonMalformed, "not a device ID", with("targets", []string{"a/b"})},
		{"target twice", ReasonMalformed, "listed twice", with("targets", []string{"a", "a"})},
		{"too many targets", ReasonMalformed, "", with("targets", make([]string, MaxTargets+1))},
		{"float size", ReasonMalformed, "", with("size", 20.0)},
		{"keys unsorted", ReasonMalformed, "deterministic", signPayload(t, unsortedPayload)},
		{"non-minimal head", ReasonMalformed, "deterministic", signPayload(t, nonMinimal)},
		{"trailing bytes", ReasonMalformed, "", signPayload(t, append(encodeMap(t, fields()), 0x00))},
		{"indefinite map", ReasonMalformed, "", signPayload(t, []byte{0xbf, 0x61, 'v', 0x01, 0xff})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Parse(tc.msg, key.Public())
			if ReasonOf(err) != tc.reason {
				t.Fatalf("Parse = %+v, %v; want %s", m, err, tc.reason)
			}
			if !strings.Contains(err.Error(), tc.detail) {
				t.Errorf("error %q does not contain %q", err, tc.detail)
			}
		})
	}
	// The unbroken map parses: the cases above fail for the broken field only.
	if _, err := Parse(signPayload(t, encodeMap(t, fields())), key.Public()); err != nil {
		t.Fatal(err)
	}
}

func TestCheck(t *testing.T) {
	m := vectorManifest()
	ok := DeviceState{Model: "oxi-1", InstalledSeq: 0, Battery: 80, ID: "oxi-00001", Now: vectorNow}
	tests := []struct {
		name   string
		change func(*DeviceState)
		reason string
	}{
		{"ok", func(*DeviceState) {}, ""},
		{"battery unknown", func(d *DeviceState) { d.Battery = -1 }, ""},
		{"battery at the minimum", func(d *DeviceState) { d.Battery = 30 }, ""},
		{"no ID: a model check", func(d *DeviceState) { d.ID = "" }, ""},
		{"last valid millisecond", func(d *DeviceState) { d.Now = m.Expiry() }, ""},
		{"wrong model", func(d *DeviceState) { d.Model = "cuff-2" }, ReasonWrongModel},
		{"model prefix", func(d *DeviceState) { d.Model = "oxi-" }, ReasonWrongModel},
		{"not targeted", func(d *DeviceState) { d.ID = "oxi-00003" }, ReasonNotTargeted},
		{"same seq", func(d *DeviceState) { d.InstalledSeq = 3 }, ReasonRollback},
		{"older seq", func(d *DeviceState) { d.InstalledSeq = 9 }, ReasonRollback},
		{"expired", func(d *DeviceState) { d.Now = m.Expiry().Add(time.Millisecond) }, ReasonExpired},
		{"battery low", func(d *DeviceState) { d.Battery = 29 }, ReasonBattery},
		{"model before rollback", func(d *DeviceState) { d.Model = "x"; d.InstalledSeq = 9 }, ReasonWrongModel},
		{"rollback before expiry", func(d *DeviceState) { d.InstalledSeq = 9; d.Now = m.Expiry().Add(time.Hour) }, ReasonRollback},
	}
	for _, tc := range tests {
		d := ok
		tc.change(&d)
		if got := ReasonOf(m.Check(d)); got != tc.reason {
			t.Errorf("%s: reason %q, want %q", tc.name, got, tc.reason)
		}
	}
	all := *m
	all.Targets = nil
	if err := all.Check(DeviceState{Model: "oxi-1", ID: "any", Battery: -1, Now: vectorNow}); err != nil {
		t.Errorf("no targets: %v", err)
	}
	if err := m.Check(DeviceState{Model: "oxi-1", ID: "oxi-00001", Battery: -1}); ReasonOf(err) != "" {
		t.Errorf("now (before 2027): %v", err) // the zero Now is time.Now()
	}
}

func TestCheckImage(t *testing.T) {
	m := vectorManifest()
	flipped := bytes.Clone(vectorImage)
	flipped[0] ^= 1
	for name, tc := range map[string]struct {
		image  []byte
		reason string
	}{
		"good":      {vectorImage, ""},
		"flipped":   {flipped, ReasonDigest},
		"truncated": {vectorImage[:10], ReasonSize},
		"longer":    {append(bytes.Clone(vectorImage), 0), ReasonSize},
	} {
		if got := ReasonOf(CheckImage(m, tc.image)); got != tc.reason {
			t.Errorf("%s: %q, want %q", name, got, tc.reason)
		}
	}
}

func TestSignRefuses(t *testing.T) {
	bad := vectorManifest()
	bad.Version = "latest"
	if _, err := Sign(vectorKey(), bad); ReasonOf(err) != ReasonMalformed {
		t.Errorf("bad version: %v", err)
	}
	if _, err := Sign(vectorKey(), nil); err == nil {
		t.Error("nil manifest signed")
	}
}

// TestKeysFromPKI signs with the update-signing.key that pki.UpdateKeys writes and parses with
// LoadPublicKey(update-signing.pub), for both algorithms.
func TestKeysFromPKI(t *testing.T) {
	for _, alg := range []pki.KeyAlg{pki.P256, pki.Ed25519} {
		dir := t.TempDir()
		if err := pki.UpdateKeys(dir, alg); err != nil {
			t.Fatal(err)
		}
		key, err := pki.LoadKey(filepath.Join(dir, pki.FileUpdateSigningKey))
		if err != nil {
			t.Fatal(err)
		}
		pub, err := LoadPublicKey(filepath.Join(dir, pki.FileUpdateSigningPub))
		if err != nil {
			t.Fatal(err)
		}
		msg, err := Sign(key, vectorManifest())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(msg, pub); err != nil {
			t.Errorf("%s: %v", alg, err)
		}
		if err := pki.UpdateKeys(dir, alg); err == nil {
			t.Errorf("%s: UpdateKeys replaced the keys", alg)
		}
	}
}

// BenchmarkParse measures what a gateway or device pays per manifest: the vector's signature check and strict
// decoding.
func BenchmarkParse(b *testing.B) {
	msg, _ := hex.DecodeString(vectorHex)
	pub := vectorKey().Public()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(msg, pub); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzParse: a manifest from the network (a job's command, the update
// repository) never panics Parse, which fails only with a Refusal
// "malformed" or "forged"; what Parse accepts is signed by the key and is
// its own deterministic encoding (Sign of the decoded manifest verifies
// again with the same key).
func FuzzParse(f *testing.F) {
	key := vectorKey()
	good, err := Sign(key, vectorManifest())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte{0xd2, 0x84, 0x40, 0xa0, 0x40, 0x40})
	pub := key.Public()
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b, pub)
		if err != nil {
			if r := ReasonOf(err); r != ReasonMalformed && r != ReasonForged {
				t.Fatalf("reason %q: %v", r, err)
			}
			return
		}
		again, err := Sign(key, m)
		if err != nil {
			t.Fatalf("Sign of an accepted manifest: %v", err)
		}
		if _, err := Parse(again, pub); err != nil {
			t.Fatalf("re-signed accepted manifest refused: %v", err)
		}
	})
}
