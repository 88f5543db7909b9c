package inventory

import (
	"crypto/x509"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

func TestVersions(t *testing.T) {
	for _, c := range []struct {
		v     string
		valid bool
	}{
		{"1.2.3", true}, {"0.0.0", true}, {"1.2.3-rc.1", true}, {"1.2.3+build.5", true}, {"10.20.30-alpha+x", true},
		{"", false}, {"v1.2.3", false}, {"1.2", false}, {"1", false}, {"1.2.3.4", false}, {"01.2.3", false}, {"1.2.x", false}, {"latest", false},
	} {
		if got := ValidVersion(c.v); got != c.valid {
			t.Errorf("ValidVersion(%q) = %v, want %v", c.v, got, c.valid)
		}
	}
	for _, c := range []struct {
		fw, min string
		below   bool
	}{
		{"1.2.3", "1.2.3", false},
		{"1.2.2", "1.2.3", true},
		{"1.10.0", "1.9.0", false}, // numeric, not text
		{"1.9.0", "1.10.0", true},
		{"2.0.0", "1.99.99", false},
		{"1.3.0-rc.1", "1.3.0", true}, // a pre-release is below its release
		{"1.3.0+b7", "1.3.0", false},  // build metadata does not count
		{"garbage", "0.0.1", true},    // not a version: nothing shows it meets the minimum
		{"1.3", "1.2.0", true},
	} {
		if got := Below(c.fw, c.min); got != c.below {
			t.Errorf("Below(%q, %q) = %v, want %v", c.fw, c.min, got, c.below)
		}
	}
	if err := CheckMinimums(map[string]string{"oxi": "1.2"}); err == nil || !strings.Contains(err.Error(), `model oxi: "1.2" is not a semantic version`) {
		t.Errorf("CheckMinimums of 1.2: %v", err)
	}
	if err := CheckMinimums(map[string]string{"": "1.2.0"}); err == nil || !strings.Contains(err.Error(), "model \"\"") {
		t.Errorf("CheckMinimums of an empty model: %v", err)
	}
}

// events records the security events of an inventory.
type events struct {
	mu  sync.Mutex
	evs []audit.Event
}

func (e *events) add(ev audit.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.evs = append(e.evs, ev)
}

func (e *events) list() []audit.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]audit.Event(nil), e.evs...)
}

func cert(serial int64, notAfter time.Time) *x509.Certificate {
	return &x509.Certificate{SerialNumber: big.NewInt(serial), NotAfter: notAfter}
}

// TestPolicy: a device reporting firmware below its model's minimum is
// marked (the per-message question), found by the firmware check and
// reported once as an event; an update above the minimum clears it; a
// model without a minimum and a device that never reported are not judged.
func TestPolicy(t *testing.T) {
	ev := &events{}
	inv, err := New(Options{Site: "s1", GatewayID: "gw1", MinFirmware: map[string]string{"oxi": "1.3.0"}, Event: ev.add})
	if err != nil {
		t.Fatal(err)
	}
	inv.Connected("d1", cert(1, time.Now().Add(24*time.Hour)), "127.0.0.1:1")
	if inv.BelowMin("d1") {
		t.Fatal("marked before any report")
	}
	if _, _, _, ok := inv.FirmwareCheck("d1"); ok {
		t.Fatal("firmware check ok before any report")
	}
	inv.Status("d1", Report{Model: "oxi", FW: "1.2.9", FWSeq: 4})
	inv.Status("d1", Report{Model: "oxi", FW: "1.2.9", FWSeq: 4}) // at every connect: no second event
	if !inv.BelowMin("d1") {
		t.Fatal("1.2.9 under a minimum of 1.3.0 not marked")
	}
	if v, m, below, ok := inv.FirmwareCheck("d1"); !ok || !below || v != "1.2.9" || m != "1.3.0" {
		t.Fatalf("FirmwareCheck = %q %q %v %v", v, m, below, ok)
	}
	evs := ev.list()
	if len(evs) != 1 || evs[0].Verdict != EventBelowMin || evs[0].Dev != "d1" || evs[0].GW != "gw1" ||
		!strings.Contains(evs[0].Detail, "firmware 1.2.9") || !strings.Contains(evs[0].Detail, "minimum 1.3.0") {
		t.Fatalf("events %+v, want one %s about d1", evs, EventBelowMin)
	}
	inv.Status("d1", Report{Model: "oxi", FW: "1.3.0", FWSeq: 5})
	if inv.BelowMin("d1") {
		t.Fatal("still marked after the update to 1.3.0")
	}
	if _, _, below, ok := inv.FirmwareCheck("d1"); !ok || below {
		t.Fatal("firmware check still below after the update")
	}
	inv.Status("d2", Report{Model: "bpm", FW: "0.0.1"})
	if inv.BelowMin("d2") || len(ev.list()) != 1 {
		t.Fatal("a model without a minimum judged")
	}
	if _, below, _ := inv.Counts(); below != 0 {
		t.Fatalf("%d devices counted below the minimum, want 0", below)
	}
}

// TestEntries: connections, verdicts and reports make up an entry; the
// cap bounds the devices kept, and reported strings are cut.
func TestEntries(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	inv, err := New(Options{MaxDevices: 2, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	exp := now.Add(30 * 24 * time.Hour)
	inv.Connected("d1", cert(0xabc, exp), "127.0.0.1:1")
	for range 3 {
		inv.Verdict("d1", "")
	}
	inv.Verdict("d1", verdict.Replay)
	inv.Status("d1", Report{Model: strings.Repeat("m", 100), FW: "1.0.0", FWSeq: 2})
	inv.Verdict("d2", verdict.BadSignature)
	inv.Connected("d3", cert(3, exp), "127.0.0.1:3") // beyond the cap
	inv.Status("d3", Report{Model: "oxi", FW: "1.0.0"})
	list := inv.List()
	if len(list) != 2 || list[0].ID != "d1" || list[1].ID != "d2" {
		t.Fatalf("devices %+v, want d1 and d2", list)
	}
	d := list[0]
	if d.CertSerial != "abc" || !d.CertNotAfter.Equal(exp) || !d.LastSeen.Equal(now) || d.FW != "1.0.0" || d.FWSeq != 2 ||
		len(d.Model) != MaxField || d.Verdicts[Accepted] != 3 || d.Verdicts[string(verdict.Replay)] != 1 {
		t.Fatalf("d1 = %+v", d)
	}
	if list[1].Verdicts[string(verdict.BadSignature)] != 1 {
		t.Fatalf("d2 = %+v", list[1])
	}
	if n, _, untracked := inv.Counts(); n != 2 || untracked != 2 {
		t.Fatalf("Counts = %d devices, %d untracked; want 2 and 2", n, untracked)
	}
}

// TestPersisted: Save writes the inventory atomically, a new inventory
// loads it with the policy of its own start, and a damaged file is refused
// with its name.
func TestPersisted(t *testing.T) {
	path := filepath.Join(t.TempDir(), File)
	inv, err := New(Options{File: path})
	if err != nil {
		t.Fatal(err)
	}
	inv.Connected("d1", cert(7, time.Now().Add(time.Hour)), "127.0.0.1:1")
	inv.Verdict("d1", "")
	inv.Status("d1", Report{Model: "oxi", FW: "1.2.0", FWSeq: 3})
	if err := inv.Save(); err != nil {
		t.Fatal(err)
	}
	ev := &events{}
	again, err := New(Options{File: path, MinFirmware: map[string]string{"oxi": "2.0.0"}, Event: ev.add})
	if err != nil {
		t.Fatal(err)
	}
	if evs := ev.list(); len(evs) != 1 || evs[0].Verdict != EventBelowMin || evs[0].Dev != "d1" {
		t.Fatalf("events at a start with a new minimum: %+v, want one %s of d1", evs, EventBelowMin)
	}
	if err := again.Save(); err != nil { // the new policy's marks are saved
		t.Fatal(err)
	}
	if _, err := New(Options{File: path, MinFirmware: map[string]string{"oxi": "2.0.0"}, Event: ev.add}); err != nil || len(ev.list()) != 1 {
		t.Fatalf("a second start under the same minimum: %v, %d events; want no new one", err, len(ev.list()))
	}
	got := again.List()
	if len(got) != 1 || got[0].FW != "1.2.0" || got[0].FWSeq != 3 || got[0].Verdicts[Accepted] != 1 || got[0].CertSerial != "7" {
		t.Fatalf("loaded %+v", got)
	}
	if !again.BelowMin("d1") || got[0].MinFirmware != "2.0.0" {
		t.Fatal("the new start's min_firmware not applied to the loaded inventory")
	}
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*tmp*"))
	if len(matches) != 0 {
		t.Fatalf("temporary files left: %v", matches)
	}
	for _, c := range []struct{ name, body, want string }{
		{"not json", "{", "unexpected end of JSON input"},
		{"version", `{"v":2,"devices":[]}`, "version 2, want 1"},
		{"bad id", `{"v":1,"devices":[{"id":"a/b"}]}`, "entry 1: not a device entry"},
		{"long model", `{"v":1,"devices":[{"id":"d","model":"` + strings.Repeat("m", MaxField+1) + `"}]}`, "entry 1: not a device entry"},
	} {
		os.WriteFile(path, []byte(c.body), 0o600)
		if _, err := New(Options{File: path}); err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: %v, want an error naming the file with %q", c.name, err, c.want)
		}
	}
	os.WriteFile(path, []byte(`{"v":1,"devices":[`+strings.Repeat(`{"id":"d"},`, 2000)+`{"id":"d"}]}`), 0o600)
	if _, err := Load(path, 1); err == nil || !strings.Contains(err.Error(), "over") {
		t.Errorf("a file larger than the cap allows: %v", err)
	}
}
