package fleet

import (
	"crypto"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/fleet/physio"
	"github.com/vitalgate/vitalgate/internal/telemetry"
)

// Device is one simulated device: its identity, kind, physiology, battery and
// sequence number. It only makes records; [Run] connects devices, and
// [SignRecord] signs a record. A Device is not safe for concurrent use.
type Device struct {
	ID   string
	Kind string
	// Now is the device's clock, read by [Device.Next]; nil means time.Now.
	Now func() time.Time

	model physio.Model
	rng   *rand.Rand
	seq   uint64 // last seq used
	bat   float64
	last  time.Time
}

// NewDevice returns device id of kind (one of [physio.Kinds]) whose
// physiology is seeded from seed and id: the same arguments give the same
// values at the same times. Time of day follows the local time zone.
func NewDevice(id, kind string, seed int64) (*Device, error) {
	s := deviceSeed(seed, id)
	m, err := physio.New(kind, s, nil)
	if err != nil {
		return nil, err
	}
	r := rand.New(rand.NewPCG(s, 0xba77e1))
	return &Device{ID: id, Kind: kind, model: m, rng: r, bat: 40 + 60*r.Float64()}, nil
}

// deviceSeed mixes the fleet seed with the device ID (FNV-1a, then a
// splitmix64 finaliser).
func deviceSeed(seed int64, id string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(id); i++ {
		h ^= uint64(id[i])
		h *= 1099511628211
	}
	z := h ^ uint64(seed)*0x9e3779b97f4a7c15
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// Seq is the last sequence number used (0 before the first record).
func (d *Device) Seq() uint64 { return d.seq }

// SetSeq sets the last sequence number used: the next record gets last+1.
func (d *Device) SetSeq(last uint64) { d.seq = last }

// Next returns the next record, measured now by the device's clock.
func (d *Device) Next() telemetry.Record {
	now := time.Now
	if d.Now != nil {
		now = d.Now
	}
	return d.NextAt(now())
}

// NextAt returns the next record, measured at t: seq is one more than the
// last, ts is t in Unix milliseconds, and the observations come from the
// device's physiology at t. Times should not go backwards.
func (d *Device) NextAt(t time.Time) telemetry.Record {
	d.seq++
	obs := d.model.Sample(t)
	r := telemetry.Record{
		V:    telemetry.Version,
		Dev:  d.ID,
		Seq:  d.seq,
		TS:   t.UnixMilli(),
		Kind: d.Kind,
		Obs:  make([]telemetry.Observation, len(obs)),
	}
	for i, o := range obs {
		r.Obs[i] = telemetry.Observation{Code: o.Code, Unit: o.Unit, Val: telemetry.Scalar(o.Val)}
		if o.Samples != nil {
			r.Obs[i].Val = telemetry.Waveform(o.Samples)
			p := o.PeriodMS
			r.Obs[i].PeriodMS = &p
		}
	}
	bat := uint8(d.battery(t))
	r.Bat = &bat
	return r
}

// battery drains about 1 % every 20 minutes and is recharged to 100 % when
// it falls under 15 %.
func (d *Device) battery(t time.Time) float64 {
	if !d.last.IsZero() && t.After(d.last) {
		d.bat -= t.Sub(d.last).Minutes() / 20 * (0.8 + 0.4*d.rng.Float64())
		if d.bat < 15 {
			d.bat = 100
		}
	}
	d.last = t
	return math.Round(min(max(d.bat, 0), 100))
}

// SignRecord encodes r (deterministic CBOR) and signs it as a tagged
// COSE_Sign1 with key, kid in the protected header (the device ID; "" for
// none).
func SignRecord(key crypto.Signer, kid string, r *telemetry.Record) ([]byte, error) {
	b, err := telemetry.Encode(r)
	if err != nil {
		return nil, err
	}
	msg, err := envelope.Sign(key, kid, b)
	if err != nil {
		return nil, fmt.Errorf("sign record %s:%d: %w", r.Dev, r.Seq, err)
	}
	return msg, nil
}
