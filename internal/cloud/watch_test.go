package cloud

import (
	"context"
	"crypto"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/testutil"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// signedMessage builds what a gateway accepted from dev-00001: a record
// signed with its key.
func signedMessage(t *testing.T, dir string, seq uint64, spo2 float64) *wire.Accepted {
	t.Helper()
	_, keyFile := pki.DevicePaths(dir, "dev-00001")
	key, err := pki.LoadKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return signedBy(t, key, seq, spo2)
}

// signedBy is a record of dev-00001 signed with key (the device's or another).
func signedBy(t *testing.T, key crypto.Signer, seq uint64, spo2 float64) *wire.Accepted {
	t.Helper()
	bat := uint8(80)
	rec := telemetry.Record{V: 1, Dev: "dev-00001", Seq: seq, TS: time.Date(2025, 1, 2, 12, 0, 1, 0, time.UTC).UnixMilli(), Kind: "spo2",
		Obs: []telemetry.Observation{
			{Code: "MDC_PULS_OXIM_SAT_O2", Val: telemetry.Scalar(spo2), Unit: "%"},
			{Code: "MDC_PULS_OXIM_PULS_RATE", Val: telemetry.Scalar(72), Unit: "/min"},
		}, Bat: &bat}
	payload, err := telemetry.Encode(&rec)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := envelope.Sign(key, "dev-00001", payload)
	if err != nil {
		t.Fatal(err)
	}
	return &wire.Accepted{Site: "site1", GW: "gw1", RX: time.Now().UnixMilli(), Rec: &rec, Raw: payload, Sig: sig}
}

func TestWatcherChecksSignatureEndToEnd(t *testing.T) {
	dir := testPKI(t)
	w, err := NewWatcher(dir, 2)
	if err != nil {
		t.Fatal(err)
	}
	// enc encodes a's message as the gateway does, from a.Rec as it is now
	// (a test may have changed it after signing).
	enc := func(a *wire.Accepted, f wire.Format) []byte {
		raw, err := telemetry.Encode(a.Rec)
		if err != nil {
			t.Fatal(err)
		}
		a.Raw = raw
		b, err := wire.Encode(f, a)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	topic := "telemetry/site1/dev-00001/spo2"
	m1 := signedMessage(t, dir, 1, 97)
	s, err := w.Handle(topic, enc(m1, wire.CBOR))
	if err != nil || s.Dup || s.Status != SigOK {
		t.Fatalf("valid message: %+v %v", s, err)
	}
	line := s.Line(time.UTC)
	if want := "12:00:01 site1 dev-00001 spo2 SpO2 97 % pulse 72 /min bat 80%  [sig ok]"; line != want {
		t.Errorf("line\n got %q\nwant %q", line, want)
	}
	if s, _ := w.Handle(topic, enc(m1, wire.JSON)); !s.Dup {
		t.Error("duplicate not dropped")
	}

	// The gateway (or anyone on the way) changed the value: the signature
	// still verifies, but over another record.
	m2 := signedMessage(t, dir, 2, 97)
	m2.Rec.Obs[0].Val = telemetry.Scalar(99)
	if s, _ := w.Handle(topic, enc(m2, wire.CBOR)); s.Status != SigMismatch {
		t.Errorf("tampered rec: %s", s.Status)
	}
	m3 := signedMessage(t, dir, 3, 97)
	m3.Sig[len(m3.Sig)-1] ^= 1
	if s, _ := w.Handle(topic, enc(m3, wire.CBOR)); s.Status != SigBad {
		t.Errorf("forged sig: %s", s.Status)
	}
	m4 := signedMessage(t, dir, 4, 97)
	m4.Rec.Dev = "dev-00002"
	if s, _ := w.Handle("telemetry/site1/dev-00002/spo2", enc(m4, wire.CBOR)); s.Status != SigNoCert {
		t.Errorf("unknown device: %s", s.Status)
	}
	// The LRU holds 2 IDs: the first one is forgotten after two more.
	if s, _ := w.Handle(topic, enc(m1, wire.CBOR)); s.Dup {
		t.Error("LRU did not forget")
	}
}

// TestWatcherRefusesRevokedDevice: once crl.pem lists the device (reloaded
// while watching), its records are shown as rejected.
func TestWatcherRefusesRevokedDevice(t *testing.T) {
	dir := testPKI(t)
	w, err := NewWatcher(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w.WatchRevocations(ctx)
	topic := "telemetry/site1/dev-00001/spo2"
	handle := func(seq uint64) *Seen {
		b, err := wire.Encode(wire.CBOR, signedMessage(t, dir, seq, 97))
		if err != nil {
			t.Fatal(err)
		}
		s, err := w.Handle(topic, b)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if s := handle(1); s.Status != SigOK {
		t.Fatalf("before revocation: %s %s", s.Status, s.Detail)
	}
	if err := pki.Revoke(dir, "dev-00001"); err != nil {
		t.Fatal(err)
	}
	seq := uint64(1)
	var last *Seen
	testutil.Eventually(t, 10*time.Second, "record of a revoked device rejected", func() bool {
		seq++
		last = handle(seq)
		return last.Status == SigRevoked
	})
	if line := last.Line(time.UTC); !strings.Contains(line, "[REJECTED: device certificate revoked: serial ") {
		t.Errorf("line %q", line)
	}
}
