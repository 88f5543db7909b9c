package est

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/vitalgate/vitalgate/internal/atomicfile"
	"github.com/vitalgate/vitalgate/internal/fileerr"
)

// BindingsFile is the file of the data directory that binds each factory identity to the device ID it enrolled
// as: {"MANUFACTURER CA CN/SERIAL": "ID", ...}.
const BindingsFile = "enrolled.json"

// maxBindingsSize bounds how much of the bindings file is read (a million enrolments of ~60 bytes).
const maxBindingsSize = 64 << 20

// bindings holds one device ID per factory identity, and one factory identity per device ID, persisted in
// [BindingsFile]: a factory identity enrols one device ID (again after its certificate expired, say), never
// another, and no other identity enrols as that ID.
type bindings struct {
	path string

	mu    sync.Mutex
	byKey map[string]string // identity -> device ID
	byID  map[string]string // device ID -> identity
}

// openBindings reads the bindings file at path; a missing file is no binding.
func openBindings(path string) (*bindings, error) {
	b := &bindings{path: path, byKey: map[string]string{}, byID: map[string]string{}}
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return b, nil
	}
	if err != nil {
		return nil, fileerr.Wrap("read enrolment bindings", path, err)
	}
	if fi.Size() > maxBindingsSize {
		return nil, fmt.Errorf("read enrolment bindings %s: larger than %d bytes", path, maxBindingsSize)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fileerr.Wrap("read enrolment bindings", path, err)
	}
	if err := json.Unmarshal(data, &b.byKey); err != nil {
		return nil, fmt.Errorf("read enrolment bindings %s: %w", path, err)
	}
	for k, id := range b.byKey {
		b.byID[id] = k
	}
	return b, nil
}

// bind binds the factory identity key to device ID id, persisting a new binding before it returns. It refuses
// (a 403 refusal) a key bound to another ID, or an ID bound to another key.
func (b *bindings) bind(key, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if got, ok := b.byKey[key]; ok {
		if got != id {
			return deny(id, "already enrolled as device %q: one factory identity enrols one device ID", got)
		}
		return nil
	}
	if other, ok := b.byID[id]; ok {
		return deny(id, "device ID %q was enrolled by another factory identity (%s)", id, other)
	}
	b.byKey[key], b.byID[id] = id, key
	if err := b.save(); err != nil {
		delete(b.byKey, key)
		delete(b.byID, id)
		return err
	}
	return nil
}

// save writes the bindings to a synced temporary file renamed into place.
func (b *bindings) save() error {
	data, err := json.MarshalIndent(b.byKey, "", "  ")
	if err != nil {
		return fmt.Errorf("encode enrolment bindings: %w", err)
	}
	return atomicfile.Write("write enrolment bindings", b.path, append(data, '\n'), 0o600, true)
}
