package fleet

import (
	"crypto"
	"crypto/x509"
	"reflect"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/fleet/physio"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

func deviceIdentity(t *testing.T, dir, id string, alg pki.KeyAlg) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	if err := pki.IssueDevice(dir, id, alg, 0); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := pki.DevicePaths(dir, id)
	cert, err := pki.LoadCert(certFile)
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.LoadKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func TestDeviceRecordsPassTheSchema(t *testing.T) {
	dir := newPKI(t)
	cert, key := deviceIdentity(t, dir, "dev-1", pki.P256)
	t0 := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	for _, kind := range physio.Kinds() {
		d, err := NewDevice("dev-1", kind, 7)
		if err != nil {
			t.Fatal(err)
		}
		d.SetSeq(41)
		for i := 0; i < 200; i++ {
			at := t0.Add(time.Duration(i) * 7 * time.Minute)
			r := d.NextAt(at)
			if r.Seq != 42+uint64(i) || r.TS != at.UnixMilli() || r.Dev != "dev-1" || r.Kind != kind || r.V != 1 {
				t.Fatalf("%s: record %+v", kind, r)
			}
			if r.Bat == nil || *r.Bat > 100 {
				t.Fatalf("%s: battery %v", kind, r.Bat)
			}
			if err := telemetry.DefaultSchemas().Check(&r); err != nil {
				t.Fatalf("%s at %v: %v", kind, at, err)
			}
			if i%50 == 0 {
				msg, err := SignRecord(key, "dev-1", &r)
				if err != nil {
					t.Fatal(err)
				}
				payload, err := envelope.VerifyCert(cert, msg)
				if err != nil {
					t.Fatalf("%s: %v", kind, err)
				}
				back, err := telemetry.Decode(payload)
				if err != nil {
					t.Fatal(err)
				}
				if back.Seq != r.Seq || back.Kind != kind || len(back.Obs) != len(r.Obs) {
					t.Fatalf("%s: decoded %+v", kind, back)
				}
			}
		}
	}
	if _, err := NewDevice("dev-1", "pressure", 1); err == nil {
		t.Error("want an error for an unknown kind")
	}
}

func TestDeviceDeterministic(t *testing.T) {
	at := time.Unix(1_750_000_000, 0)
	a, _ := NewDevice("dev-00001", "bp", 3)
	b, _ := NewDevice("dev-00001", "bp", 3)
	c, _ := NewDevice("dev-00002", "bp", 3)
	d, _ := NewDevice("dev-00001", "bp", 4)
	var same, diffID, diffSeed = true, false, false
	for i := 0; i < 50; i++ {
		ts := at.Add(time.Duration(i) * time.Minute)
		ra, rb, rc, rd := a.NextAt(ts), b.NextAt(ts), c.NextAt(ts), d.NextAt(ts)
		same = same && reflect.DeepEqual(ra, rb)
		rc.Dev = ra.Dev
		diffID = diffID || !reflect.DeepEqual(ra, rc)
		diffSeed = diffSeed || !reflect.DeepEqual(ra, rd)
	}
	if !same || !diffID || !diffSeed {
		t.Fatalf("same seed and ID alike: %v; other ID differs: %v; other seed differs: %v", same, diffID, diffSeed)
	}
	e, _ := NewDevice("x", "temp", 1)
	e.Now = func() time.Time { return at }
	if r := e.Next(); r.TS != at.UnixMilli() || r.Seq != 1 {
		t.Fatalf("Next: %+v", r)
	}
}

// check runs a message from device id through the shared checks in the
// gateway's order (size, signature, record, schema, identity, time) and
// returns the verdict. It is not the gateway: it shows that each attack
// message is built to fail at the check it names, and nowhere earlier.
func check(cert *x509.Certificate, id, topic string, msg []byte, now time.Time) verdict.Verdict {
	if topic != telemetryTopic(id) {
		return verdict.ACLDenied
	}
	if len(msg) > envelope.MaxMessage {
		return verdict.TooLarge
	}
	payload, err := envelope.VerifyCert(cert, msg)
	if err != nil {
		return verdict.Of(err)
	}
	r, err := telemetry.Decode(payload)
	if err != nil {
		return verdict.Of(err)
	}
	if r.Dev != id {
		return verdict.IdentityMismatch
	}
	if err := telemetry.DefaultSchemas().Check(r); err != nil {
		return verdict.Of(err)
	}
	if err := telemetry.CheckTime(r.TS, now, telemetry.DefaultMaxAge); err != nil {
		return verdict.Of(err)
	}
	return verdict.Accepted
}

func TestAttackMessages(t *testing.T) {
	dir := newPKI(t)
	for _, alg := range []pki.KeyAlg{pki.P256, pki.Ed25519} {
		id := "atk-" + string(alg)
		cert, key := deviceIdentity(t, dir, id, alg)
		now := time.Now()
		for _, mode := range Attacks() {
			if mode == AttackRevoked || mode == AttackFlood || mode == AttackRateLimited || mode == AttackReplay ||
				mode == AttackBurst || mode == AttackFlap || mode == AttackFailInstall {
				continue // no single crafted message: tested against a server
			}
			a, err := newAttacker(mode, key, "dev-other")
			if err != nil {
				t.Fatal(err)
			}
			for _, kind := range physio.Kinds() {
				d, _ := NewDevice(id, kind, 1)
				for range 4 { // every variant
					rec := d.NextAt(now)
					topic, msg, ok, err := a.craft(id, key, rec, nil, now)
					if err != nil || !ok {
						t.Fatalf("%s %s: ok %v err %v", alg, mode, ok, err)
					}
					if got := check(cert, id, topic, msg, now); string(got) != mode {
						t.Errorf("%s %s %s variant %d: verdict %q", alg, mode, kind, a.variant, got)
					}
					if mode == AttackTooLarge && (len(msg) < tooLargeMin || len(msg)+len(topic)+16 > 72<<10) {
						t.Errorf("too_large message of %d bytes", len(msg))
					}
				}
			}
		}
		// replay resends an accepted message verbatim; before one there is nothing to replay.
		a, _ := newAttacker(AttackReplay, key, "")
		d, _ := NewDevice(id, "spo2", 1)
		if _, _, ok, _ := a.craft(id, key, d.NextAt(now), nil, now); ok {
			t.Error("replay with nothing accepted yet")
		}
		good, _ := SignRecord(key, id, ptr(d.NextAt(now)))
		if _, msg, ok, _ := a.craft(id, key, d.NextAt(now), good, now); !ok || string(msg) != string(good) {
			t.Error("replay does not resend the accepted message")
		}
		if got := check(cert, id, telemetryTopic(id), good, now); got != verdict.Accepted {
			t.Errorf("a normal message: %q", got)
		}
	}
}

func ptr[T any](v T) *T { return &v }
