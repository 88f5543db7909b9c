package fleet

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"slices"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// Attack modes of --attack (docs/operations.md#devicesim): the verdicts a client can
// provoke, plus revoked and flood.
const (
	AttackBadSignature     = string(verdict.BadSignature)
	AttackReplay           = string(verdict.Replay)
	AttackMalformed        = string(verdict.Malformed)
	AttackSchema           = string(verdict.Schema)
	AttackTooLarge         = string(verdict.TooLarge)
	AttackACLDenied        = string(verdict.ACLDenied)
	AttackIdentityMismatch = string(verdict.IdentityMismatch)
	AttackFuture           = string(verdict.Future)
	AttackStale            = string(verdict.Stale)
	AttackRateLimited      = string(verdict.RateLimited)
	// AttackRevoked connects with a revoked device certificate: the gateway
	// must refuse the TLS handshake.
	AttackRevoked = "revoked"
	// AttackFlood is a connection storm: connect without ramp, publish a
	// burst, disconnect, again.
	AttackFlood = "flood"
	// AttackBurst behaves normally for AttackAfter, then sends BurstFactor
	// times its rate: valid records, within the gateway's default rate limit
	// at the default rate (20/s, burst 200). Only the gateway's behaviour
	// baseline can see it (an anomaly event).
	AttackBurst = "burst"
	// AttackFlap behaves normally for AttackAfter, then drops its
	// connection and reconnects every few seconds (FlapEvery ±1/3: 2 to 4
	// by default).
	AttackFlap = "flap"
	// AttackFailInstall is a device whose installs fail: it checks and
	// downloads an update, then reports it failed (reason "install").
	AttackFailInstall = "fail_install"
)

// BurstFactor is how many times its rate a burst attacker sends.
const BurstFactor = 20

// DefaultAttackAfter is AttackAfter for burst and flap when none is set:
// past the gateway's default anomaly warm-up of 10 minutes.
const DefaultAttackAfter = 11 * time.Minute

// OutcomeTLSRefused is the expected outcome of [AttackRevoked]: no verdict,
// the handshake is refused.
const OutcomeTLSRefused = "tls_refused"

// Attacks lists the attack modes.
func Attacks() []string {
	return []string{AttackBadSignature, AttackReplay, AttackMalformed, AttackSchema, AttackTooLarge,
		AttackACLDenied, AttackIdentityMismatch, AttackFuture, AttackStale, AttackRateLimited,
		AttackRevoked, AttackFlood, AttackBurst, AttackFlap, AttackFailInstall}
}

// validAttack reports whether mode is "" (none) or one of [Attacks].
func validAttack(mode string) bool { return mode == "" || slices.Contains(Attacks(), mode) }

// expectedCode is the MQTT 5 PUBACK reason code an attack message of mode
// must get, and false for revoked, flood, burst and flap, which have no
// single verdict.
func expectedCode(mode string) (byte, bool) {
	switch mode {
	case "", AttackRevoked, AttackFlood, AttackBurst, AttackFlap, AttackFailInstall:
		return 0, false
	}
	return verdict.Verdict(mode).Code().Code, true
}

// Sizes of the too_large attack: above the gateway's limit on a COSE message
// (envelope.MaxMessage), below its MQTT packet limit (72 KiB by default) so
// the gateway answers with a verdict rather than dropping the connection.
const (
	tooLargeMin = envelope.MaxMessage + 1024
	tooLargeMax = 71 << 10
)

// attacker crafts the attack messages of one device.
type attacker struct {
	mode    string
	foreign crypto.Signer // bad_signature: a key the gateway does not know
	variant int           // rotates through the variants of a mode
	other   string        // acl_denied, identity_mismatch: another device's ID
	from    time.Time     // burst, flap: when the attack begins
	flapAt  time.Time     // flap: when the connection drops next
}

// crafts reports whether the mode replaces records by crafted messages
// (rate_limited, burst and flap send valid records).
func (a *attacker) crafts() bool {
	return a.mode != AttackRateLimited && a.mode != AttackBurst && a.mode != AttackFlap
}

// begin starts the clock of a burst or flap attack, which begins after
// d of normal behaviour.
func (a *attacker) begin(d time.Duration) {
	if a != nil {
		a.from = time.Now().Add(d)
	}
}

// active reports whether a burst or flap attack has begun at now.
func (a *attacker) active(mode string, now time.Time) bool {
	return a != nil && a.mode == mode && !now.Before(a.from)
}

// tickInterval is the time to the device's next record: its interval, or
// a BurstFactor-th of it once a burst has begun.
func (r *runner) tickInterval(interval time.Duration, now time.Time) time.Duration {
	if r.att.active(AttackBurst, now) {
		return interval / BurstFactor
	}
	return interval
}

// flapDue reports whether a flapping device drops its connection at now;
// the caller disconnects and reconnects. Each drop counts as an attack.
func (r *runner) flapDue(now time.Time) bool {
	if !r.att.active(AttackFlap, now) || r.cl == nil {
		return false
	}
	a := r.att
	due := !a.flapAt.IsZero() && !now.Before(a.flapAt)
	if a.flapAt.IsZero() || due {
		every := r.f.cfg.FlapEvery
		a.flapAt = now.Add(every*2/3 + time.Duration(r.rng.Int64N(int64(every*2/3)+1)))
	}
	if due {
		r.f.ctr.attackSent.Add(1)
	}
	return due
}

func newAttacker(mode string, key crypto.Signer, other string) (*attacker, error) {
	a := &attacker{mode: mode, other: other}
	if mode == AttackBadSignature {
		var err error
		switch key.Public().(type) {
		case ed25519.PublicKey:
			_, a.foreign, err = ed25519.GenerateKey(rand.Reader)
		default:
			a.foreign, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		}
		if err != nil {
			return nil, fmt.Errorf("attack key: %w", err)
		}
	}
	return a, nil
}

// craft returns the topic and payload of one attack message made from rec, a
// fresh record of dev (own seq, own key). lastOK is the payload of a message
// the gateway accepted before its latest one (for replay: a resend of the
// latest is a lost-PUBACK retry, acknowledged); craft returns ok false when
// it cannot attack yet (replay before two acceptances).
func (a *attacker) craft(dev string, key crypto.Signer, rec telemetry.Record, lastOK []byte, now time.Time) (topic string, payload []byte, ok bool, err error) {
	topic = telemetryTopic(dev)
	a.variant++
	sign := func(r *telemetry.Record) ([]byte, error) { return SignRecord(key, dev, r) }
	switch a.mode {
	case AttackBadSignature:
		payload, err = SignRecord(a.foreign, dev, &rec) // verifies with no device key
	case AttackReplay:
		if lastOK == nil {
			return "", nil, false, nil
		}
		payload = slices.Clone(lastOK)
	case AttackMalformed:
		payload, err = a.malformed(dev, key, rec)
	case AttackSchema:
		a.schema(&rec)
		payload, err = sign(&rec)
	case AttackTooLarge:
		payload, err = tooLarge(dev, key, rec)
	case AttackACLDenied:
		topic = telemetryTopic(a.other)
		if a.variant%2 == 0 {
			topic = "devices/" + dev + "/config" // own prefix, not a telemetry topic
		}
		payload, err = sign(&rec)
	case AttackIdentityMismatch:
		rec.Dev = a.other // signed with our own key, kid = our ID: only dev lies
		payload, err = sign(&rec)
	case AttackFuture:
		rec.TS = now.Add(10 * time.Minute).UnixMilli()
		payload, err = sign(&rec)
	case AttackStale:
		rec.TS = now.Add(-10 * 24 * time.Hour).UnixMilli()
		payload, err = sign(&rec)
	default:
		return "", nil, false, fmt.Errorf("attack %q crafts no messages", a.mode)
	}
	return topic, payload, err == nil, err
}

// malformed rotates through: bytes that are not CBOR; a COSE_Sign1 cut
// short; a correctly signed payload whose record repeats a key.
func (a *attacker) malformed(dev string, key crypto.Signer, rec telemetry.Record) ([]byte, error) {
	switch a.variant % 3 {
	case 0:
		return []byte{0xff, 0x00, 'n', 'o', 't', ' ', 'c', 'o', 's', 'e'}, nil
	case 1:
		msg, err := SignRecord(key, dev, &rec)
		if err != nil {
			return nil, err
		}
		return msg[:len(msg)/2], nil
	}
	b, err := telemetry.Encode(&rec)
	if err != nil {
		return nil, err
	}
	dup, err := duplicateKey(b)
	if err != nil {
		return nil, err
	}
	return envelope.Sign(key, dev, dup)
}

// duplicateKey appends a second "v": 1 to the encoded record map (whose
// header must be a one-byte map header, fewer than 24 entries).
func duplicateKey(rec []byte) ([]byte, error) {
	if len(rec) == 0 || rec[0]&0xe0 != 0xa0 || rec[0]&0x1f >= 23 {
		return nil, fmt.Errorf("duplicate key: unexpected record header 0x%02x", rec[0])
	}
	extra, err := cbor.Marshal("v")
	if err != nil {
		return nil, err
	}
	out := append([]byte{rec[0] + 1}, rec[1:]...)
	out = append(out, extra...)
	return append(out, 0x01), nil
}

// schema rotates through: a value out of its possible range; a wrong unit;
// an unknown kind; a missing required code.
func (a *attacker) schema(rec *telemetry.Record) {
	o := &rec.Obs[0]
	switch a.variant % 4 {
	case 0:
		if o.Val.IsWaveform() {
			o.Val.Samples[len(o.Val.Samples)/2] = 42 // mV, outside -10..10
		} else {
			o.Val = telemetry.Scalar(5000) // outside every kind's range
		}
	case 1:
		o.Unit = "[degF]"
	case 2:
		rec.Kind = "pressure"
	case 3:
		o.Code = "MDC_UNKNOWN_" + o.Code[4:]
	}
}

// tooLarge signs a record padded with waveform samples to between
// tooLargeMin and tooLargeMax bytes.
func tooLarge(dev string, key crypto.Signer, rec telemetry.Record) ([]byte, error) {
	period := uint64(4)
	n := tooLargeMin / 9 // samples are at most 9 bytes (float64)
	for range 8 {
		samples := make([]float64, n)
		for i := range samples {
			samples[i] = 0.1234567 + float64(i)*1e-7 // not representable in float32: 9 bytes each
		}
		r := rec
		r.Kind = "ecg"
		r.Obs = nil
		for len(samples) > 0 {
			k := min(len(samples), telemetry.MaxSamples)
			r.Obs = append(r.Obs, telemetry.Observation{Code: "MDC_ECG_ELEC_POTL_II", Unit: "mV",
				Val: telemetry.Waveform(samples[:k]), PeriodMS: &period})
			samples = samples[k:]
		}
		msg, err := SignRecord(key, dev, &r)
		if err != nil {
			return nil, err
		}
		switch {
		case len(msg) < tooLargeMin:
			n += (tooLargeMin-len(msg))/9 + 16
		case len(msg) > tooLargeMax:
			n -= (len(msg)-tooLargeMax)/9 + 16
		default:
			return msg, nil
		}
	}
	return nil, fmt.Errorf("too_large: could not size the payload")
}

// telemetryTopic is the telemetry topic of device id (docs/protocol.md#3-the-message-cose_sign1-around-a-cbor-record).
func telemetryTopic(id string) string { return "devices/" + id + "/telemetry" }
