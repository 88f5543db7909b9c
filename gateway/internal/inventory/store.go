package inventory

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/vitalgate/vitalgate/internal/atomicfile"
	"github.com/vitalgate/vitalgate/internal/fileerr"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// saveEvery is how often a changed inventory is written to its file, at
// most: a save that took d waits saveShare × d before the next, so a large
// inventory costs at most 1/saveShare of a core (50,000 devices: about a
// second to write, so every 20 s).
const (
	saveEvery = 5 * time.Second
	saveShare = 20
)

// maxEntry bounds the bytes of one entry in the file (IDs, two fields of
// MaxField bytes, a few times and a verdict count per verdict).
const maxEntry = 2048

// fileHeader is the JSON object of the file.
type fileHeader struct {
	V       int       `json:"v"`
	Saved   time.Time `json:"saved"`
	Devices []*Device `json:"devices"`
}

// Load reads an inventory file written by [Inventory.Save]: at most max
// devices (0: DefaultMaxDevices), a missing file being an empty inventory.
// A file larger than max entries can be is refused, as is an entry with an
// invalid device ID or a field over MaxField.
func Load(path string, max int) ([]*Device, error) {
	if max <= 0 {
		max = DefaultMaxDevices
	}
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fileerr.Wrap("open inventory", path, err)
	}
	defer f.Close()
	limit := int64(max)*maxEntry + 4096
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fileerr.Wrap("read inventory", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fileerr.Wrap("read inventory", path, fmt.Errorf("over %d bytes, the most %d devices take", limit, max))
	}
	var h fileHeader
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fileerr.Wrap("read inventory", path, err)
	}
	if h.V != 1 {
		return nil, fileerr.Wrap("read inventory", path, fmt.Errorf("version %d, want 1", h.V))
	}
	if len(h.Devices) > max {
		h.Devices = h.Devices[:max]
	}
	for i, d := range h.Devices {
		if d == nil || !pki.ValidDeviceID(d.ID) || len(d.Model) > MaxField || len(d.FW) > MaxField || len(d.Verdicts) > 64 {
			return nil, fileerr.Wrap("read inventory", path, fmt.Errorf("entry %d: not a device entry", i+1))
		}
		if d.Verdicts == nil {
			d.Verdicts = map[string]uint64{}
		}
	}
	return h.Devices, nil
}

// Save writes the inventory to its file, through a temporary file, an
// fsync and a rename, when it changed since the last save.
func (inv *Inventory) Save() error {
	inv.saveMu.Lock()
	defer inv.saveMu.Unlock()
	inv.mu.Lock()
	if !inv.dirty || inv.o.File == "" {
		inv.mu.Unlock()
		return nil
	}
	inv.dirty = false
	inv.mu.Unlock()
	list := inv.List()
	h := fileHeader{V: 1, Saved: inv.o.Now().UTC(), Devices: make([]*Device, len(list))}
	for i := range list {
		h.Devices[i] = &list[i]
	}
	var b bytes.Buffer
	err := json.NewEncoder(&b).Encode(h)
	if err == nil {
		err = atomicfile.Write("write inventory", inv.o.File, b.Bytes(), 0o644, true)
	}
	if err != nil {
		inv.mu.Lock()
		inv.dirty = true
		inv.mu.Unlock()
	}
	return err
}

// Run publishes changed entries and saves the inventory every few seconds
// until ctx is done, then saves it once more.
func (inv *Inventory) Run(ctx context.Context) {
	tick := time.NewTicker(saveEvery)
	defer tick.Stop()
	inv.publish()      // what changed before a restart and was not acknowledged
	var next time.Time // no save before it
	for {
		select {
		case <-ctx.Done():
			inv.save()
			return
		case <-inv.notify:
			inv.publish()
		case <-tick.C:
			inv.publish() // entries the relay's buffer refused before
			if start := time.Now(); !start.Before(next) {
				inv.save()
				next = start.Add(saveShare * time.Since(start))
			}
		}
	}
}

// save is Save with its error logged.
func (inv *Inventory) save() {
	if err := inv.Save(); err != nil {
		inv.o.Log.Warn("inventory not saved: retried in a few seconds", "error", err)
	}
}
