package inventory

import (
	"encoding/json"
	"time"
)

// Entry is the retained message of a device on inventory/{site}/{device_id}
// (JSON): its material facts, not its counters, so it changes only when
// they do.
type Entry struct {
	V            int       `json:"v"`
	Dev          string    `json:"dev"`
	Site         string    `json:"site"`
	GW           string    `json:"gw"`
	Model        string    `json:"model,omitempty"`
	FW           string    `json:"fw,omitempty"`
	FWSeq        uint64    `json:"fw_seq"`
	CertNotAfter time.Time `json:"cert_not_after,omitzero"`
	MinFirmware  string    `json:"min_firmware,omitempty"`
	BelowMin     bool      `json:"fw_below_min"`
	// Changed is when model, firmware or certificate last changed (Unix ms).
	Changed int64 `json:"changed"`
}

// Topic is the retained topic of a device's entry.
func Topic(site, dev string) string { return "inventory/" + site + "/" + dev }

// entryOf is d's retained message.
func (inv *Inventory) entryOf(d *Device) []byte {
	b, _ := json.Marshal(Entry{V: 1, Dev: d.ID, Site: inv.o.Site, GW: inv.o.GatewayID, Model: d.Model, FW: d.FW, FWSeq: d.FWSeq,
		CertNotAfter: d.CertNotAfter, MinFirmware: d.MinFirmware, BelowMin: d.BelowMin, Changed: d.Changed.UnixMilli()})
	return b // no field of Entry fails to encode
}

// publish hands the relay the entries that changed, where the retained
// message differs from the one the cloud acknowledged. The relay keeps the
// latest per topic, so an entry handed twice before its acknowledgement is
// published once.
func (inv *Inventory) publish() {
	if inv.o.Relay == nil {
		return
	}
	inv.mu.Lock()
	batch := inv.pending
	inv.pending = map[string]struct{}{}
	type out struct {
		dev, fp string
		payload []byte
	}
	todo := make([]out, 0, len(batch))
	for dev := range batch {
		if d := inv.devices[dev]; d != nil && !d.Changed.IsZero() {
			p := inv.entryOf(d)
			if fp := fingerprint(p); fp != d.Published {
				todo = append(todo, out{dev, fp, p})
			}
		}
	}
	inv.mu.Unlock()
	for i, m := range todo {
		if !inv.o.Relay.Retain(Topic(inv.o.Site, m.dev), m.payload, func() { inv.acked(m.dev, m.fp) }) {
			inv.mu.Lock() // the relay's buffer is full: the next tick tries again
			for _, r := range todo[i:] {
				inv.pending[r.dev] = struct{}{}
			}
			inv.mu.Unlock()
			return
		}
	}
}

// acked records that the cloud holds dev's entry fp.
func (inv *Inventory) acked(dev, fp string) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if d := inv.devices[dev]; d != nil {
		d.Published, inv.dirty = fp, true
	}
}
