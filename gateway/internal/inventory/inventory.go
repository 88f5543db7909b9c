// Package inventory is the gateway's device inventory: for each device,
// its model and firmware (as its signed status records report them), the
// expiry of the certificate it last connected with, when it was last seen
// and how many of its messages ended in each verdict.
//
// An [Inventory] is an ingest observer (connections and verdicts) and takes
// the devices' status reports ([Inventory.Status]). It keeps at most
// MaxDevices devices, persists them in a file of the data directory
// (atomically, every few seconds and when it stops) for `gateway devices`,
// and publishes an entry, retained, on inventory/{site}/{device_id} through
// the relay when it changes materially (model, firmware, certificate), not
// on every message.
//
// A min_firmware policy (a minimum semantic version per model) marks the
// devices below it: [Inventory.BelowMin] is the per-message question the
// ingest hook asks for the cloud message's fw_below_min (one atomic load
// and one map lookup), [Inventory.FirmwareCheck] is the posture audit's
// firmware check, and a device found below its minimum is a
// firmware_below_min security event. Its data still flows.
package inventory

import (
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// File is the name of the inventory in the data directory.
const File = "inventory.json"

// EventBelowMin is the security event of a device found below its model's
// minimum firmware.
const EventBelowMin = "firmware_below_min"

// DefaultMaxDevices bounds the devices kept by default.
const DefaultMaxDevices = 50000

// MaxField bounds a model or firmware string kept (longer ones are cut).
const MaxField = 64

// Accepted is the verdict count key of accepted messages (the verdict "").
const Accepted = "accepted"

// Device is one device's entry, as `gateway devices --json` and GET
// /devices show it.
type Device struct {
	ID           string            `json:"id"`
	Model        string            `json:"model,omitempty"`
	FW           string            `json:"fw,omitempty"`
	FWSeq        uint64            `json:"fw_seq"`
	CertSerial   string            `json:"cert_serial,omitempty"` // hex
	CertNotAfter time.Time         `json:"cert_not_after,omitzero"`
	LastSeen     time.Time         `json:"last_seen,omitzero"`
	Reported     time.Time         `json:"reported,omitzero"` // last status report
	Verdicts     map[string]uint64 `json:"verdicts"`          // "accepted" and each rejection verdict
	MinFirmware  string            `json:"min_firmware,omitempty"`
	BelowMin     bool              `json:"fw_below_min,omitempty"`
	// Changed is when model, firmware or certificate last changed.
	Changed time.Time `json:"changed,omitzero"`
	// Published is the SHA-256 (hex) of the retained entry the cloud
	// acknowledged, so a restart publishes only what changed.
	Published string `json:"published,omitempty"`
}

// Report is what a device's status record says of it.
type Report struct {
	Model string
	FW    string // semantic version
	FWSeq uint64 // installed manifest seq, 0 for the factory image
}

// Retainer publishes a retained message through the relay; *relay.Relay
// implements it.
type Retainer interface {
	Retain(topic string, payload []byte, acked func()) bool
}

// Options configure an [Inventory].
type Options struct {
	Site, GatewayID string
	File            string            // the persisted inventory; "" keeps it in memory
	Relay           Retainer          // nil: nothing published
	MinFirmware     map[string]string // model → minimum version (validated with [CheckMinimums])
	MaxDevices      int               // default DefaultMaxDevices
	Event           func(audit.Event) // security events; nil: none
	Log             *slog.Logger
	Now             func() time.Time
}

// Inventory is the device inventory; create it with [New], run it with
// [Inventory.Run]. Its methods are safe for concurrent use; the observer
// methods take one short lock and never block.
type Inventory struct {
	o      Options
	notify chan struct{} // capacity 1: an entry changed materially
	below  atomic.Pointer[map[string]bool]
	saveMu sync.Mutex

	mu        sync.Mutex
	devices   map[string]*Device
	pending   map[string]struct{} // devices whose entry changed since the last publish
	untracked atomic.Uint64       // devices seen beyond the cap (each time)
	dirty     bool
}

// New loads o.File (a missing file is an empty inventory).
func New(o Options) (*Inventory, error) {
	if o.MaxDevices <= 0 {
		o.MaxDevices = DefaultMaxDevices
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if err := CheckMinimums(o.MinFirmware); err != nil {
		return nil, fmt.Errorf("inventory: min_firmware: %w", err)
	}
	devs, err := Load(o.File, o.MaxDevices)
	if err != nil {
		return nil, err
	}
	inv := &Inventory{o: o, notify: make(chan struct{}, 1), devices: make(map[string]*Device, len(devs)), pending: map[string]struct{}{}}
	below := map[string]bool{}
	for _, d := range devs {
		inv.devices[d.ID] = d
		was, wasMin := d.BelowMin, d.MinFirmware
		inv.policy(d) // the policy of this start, not of the file's
		inv.dirty = inv.dirty || was != d.BelowMin || wasMin != d.MinFirmware
		if d.BelowMin {
			below[d.ID] = true
			if !was { // below a minimum new at this start
				inv.belowEvent(*d, o.Now().UTC())
			}
		}
		inv.pending[d.ID] = struct{}{} // published again if not as the cloud acknowledged it
	}
	inv.below.Store(&below)
	return inv, nil
}

// entry returns dev's entry, created within the cap; nil beyond it. The
// caller holds inv.mu.
func (inv *Inventory) entry(dev string) *Device {
	if d := inv.devices[dev]; d != nil {
		return d
	}
	if len(inv.devices) >= inv.o.MaxDevices {
		inv.untracked.Add(1)
		return nil
	}
	d := &Device{ID: dev, Verdicts: map[string]uint64{}}
	inv.devices[dev] = d
	return d
}

// Connected records the certificate the device connected with.
func (inv *Inventory) Connected(dev string, cert *x509.Certificate, _ string) {
	now := inv.o.Now().UTC()
	inv.mu.Lock()
	defer inv.mu.Unlock()
	d := inv.entry(dev)
	if d == nil {
		return
	}
	d.LastSeen, inv.dirty = now, true
	if cert == nil || cert.SerialNumber == nil {
		return
	}
	serial := cert.SerialNumber.Text(16)
	if serial != d.CertSerial || !cert.NotAfter.Equal(d.CertNotAfter) {
		d.CertSerial, d.CertNotAfter, d.Changed = serial, cert.NotAfter.UTC(), now
		inv.changed(dev)
	}
}

// Disconnected records when the device was last seen.
func (inv *Inventory) Disconnected(dev string, _ *x509.Certificate, _ string) {
	now := inv.o.Now().UTC()
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if d := inv.devices[dev]; d != nil {
		d.LastSeen, inv.dirty = now, true
	}
}

// Verdict counts one message of dev by its verdict.
func (inv *Inventory) Verdict(dev string, v verdict.Verdict) {
	key := string(v)
	if v == "" {
		key = Accepted
	}
	now := inv.o.Now().UTC()
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if d := inv.entry(dev); d != nil {
		d.Verdicts[key]++ // the keys are the verdict names: a bounded set
		d.LastSeen, inv.dirty = now, true
	}
}

// Status records a device's status report: model and firmware, judged
// against the policy. A device newly below its minimum is a security event.
func (inv *Inventory) Status(dev string, r Report) {
	now := inv.o.Now().UTC()
	r.Model, r.FW = cut(r.Model), cut(r.FW)
	inv.mu.Lock()
	d := inv.entry(dev)
	if d == nil {
		inv.mu.Unlock()
		return
	}
	d.LastSeen, d.Reported, inv.dirty = now, now, true
	if d.Model == r.Model && d.FW == r.FW && d.FWSeq == r.FWSeq {
		inv.mu.Unlock()
		return
	}
	was := d.BelowMin
	d.Model, d.FW, d.FWSeq, d.Changed = r.Model, r.FW, r.FWSeq, now
	inv.policy(d)
	if was != d.BelowMin {
		inv.setBelow(dev, d.BelowMin)
	}
	e := *d
	inv.changed(dev)
	inv.mu.Unlock()
	if e.BelowMin && !was {
		inv.belowEvent(e, now)
	}
}

// belowEvent reports a device found below its model's minimum.
func (inv *Inventory) belowEvent(d Device, now time.Time) {
	if inv.o.Event == nil {
		return
	}
	inv.o.Event(audit.Event{V: 1, TS: now.UnixMilli(), GW: inv.o.GatewayID, Dev: d.ID, Verdict: EventBelowMin, Severity: "high",
		Detail: fmt.Sprintf("model %s reports firmware %s (seq %d), below the site's minimum %s: its data still flows, marked fw_below_min",
			d.Model, d.FW, d.FWSeq, d.MinFirmware)})
}

// policy applies the configured minimums to d. The caller holds inv.mu
// (or owns d).
func (inv *Inventory) policy(d *Device) { ApplyPolicy(d, inv.o.MinFirmware) }

// ApplyPolicy sets d's minimum and mark from a min_firmware policy (model →
// minimum): a device that reported a firmware below its model's minimum is
// marked.
func ApplyPolicy(d *Device, minimums map[string]string) {
	d.MinFirmware = minimums[d.Model]
	d.BelowMin = d.MinFirmware != "" && d.FW != "" && Below(d.FW, d.MinFirmware)
}

// setBelow marks or unmarks dev for [Inventory.BelowMin]: a new set, copied
// from the one in use (readers never lock), in the size of the devices
// marked. The caller holds inv.mu.
func (inv *Inventory) setBelow(dev string, below bool) {
	old := *inv.below.Load()
	m := make(map[string]bool, len(old)+1)
	for id := range old {
		m[id] = true
	}
	if below {
		m[dev] = true
	} else {
		delete(m, dev)
	}
	inv.below.Store(&m)
}

// changed notes a material change of dev's entry for the publisher. The
// caller holds inv.mu.
func (inv *Inventory) changed(dev string) {
	inv.dirty = true
	inv.pending[dev] = struct{}{}
	select {
	case inv.notify <- struct{}{}:
	default:
	}
}

// BelowMin reports whether dev runs firmware below its model's minimum: the
// mark of its cloud messages. One atomic load and one map lookup.
func (inv *Inventory) BelowMin(dev string) bool {
	return (*inv.below.Load())[dev]
}

// FirmwareCheck is the posture audit's firmware check
// (posture.FirmwareCheck): ok only for a device that reported its firmware
// and whose model has a minimum.
func (inv *Inventory) FirmwareCheck(dev string) (version, minimum string, below, ok bool) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	d := inv.devices[dev]
	if d == nil || d.FW == "" || d.MinFirmware == "" {
		return "", "", false, false
	}
	return d.FW, d.MinFirmware, d.BelowMin, true
}

// List returns a copy of every entry, by ID.
func (inv *Inventory) List() []Device {
	inv.mu.Lock()
	out := make([]Device, 0, len(inv.devices))
	for _, d := range inv.devices {
		c := *d
		c.Verdicts = maps.Clone(d.Verdicts)
		out = append(out, c)
	}
	inv.mu.Unlock()
	slices.SortFunc(out, func(a, b Device) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Counts returns the devices kept, those marked below their minimum, and
// how many times a device beyond the cap was seen.
func (inv *Inventory) Counts() (devices, below int, untracked uint64) {
	inv.mu.Lock()
	devices = len(inv.devices)
	inv.mu.Unlock()
	return devices, len(*inv.below.Load()), inv.untracked.Load()
}

// cut bounds a string a device reported (valid UTF-8, at most MaxField bytes).
func cut(s string) string {
	if len(s) > MaxField {
		s = s[:MaxField]
	}
	return strings.ToValidUTF8(s, "")
}

// fingerprint is the hex SHA-256 of a payload.
func fingerprint(b []byte) string {
	s := sha256.Sum256(b)
	return fmt.Sprintf("%x", s[:])
}
