package server

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/gateway/internal/inventory"
	"github.com/vitalgate/vitalgate/gateway/internal/posture"
	"github.com/vitalgate/vitalgate/internal/testutil"
	"github.com/vitalgate/vitalgate/internal/verdict"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// getDevices fetches GET /devices from the running gateway.
func (e *env) getDevices() map[string]inventory.Device {
	e.t.Helper()
	resp, err := http.Get("http://" + e.gw.HTTPAddr() + "/devices")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Site, GW string
		Devices  []inventory.Device
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		e.t.Fatalf("GET /devices: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		e.t.Fatal(err)
	}
	out := map[string]inventory.Device{}
	for _, d := range body.Devices {
		out[d.ID] = d
	}
	return out
}

// message returns the cloud message id the app received, if any.
func (a *app) message(id string) (*wire.Message, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, m := range a.msgs {
		if m.ID == id {
			return m, true
		}
	}
	return nil, false
}

// inventoryOf returns the inventory entries the app received for dev.
func (a *app) inventoryOf(dev string) []invMsg {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []invMsg
	for _, m := range a.inv {
		if m.topic == "inventory/site1/"+dev {
			out = append(out, m)
		}
	}
	return out
}

// TestInventoryAndMinimumFirmware: on the real gateway with
// min_firmware acme-oxi-1: 1.2.0, a device reporting 1.0.0 in its status
// shows in GET /devices with its model, firmware, certificate and verdict
// counts; it is a firmware_minimum finding and a firmware_below_min event
// at the cloud; its telemetry still reaches the app, marked fw_below_min
// from its status on (and a device at the minimum never is); its entry is
// retained on inventory/site1/{dev} once per material change, not per
// message, and an update to the minimum clears the mark.
func TestInventoryAndMinimumFirmware(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Audit.Interval = time.Hour
		c.MinFirmware = map[string]string{"acme-oxi-1": "1.2.0"}
	})
	a := e.app("ssl://" + e.gw.Cloud().AppsAddr())
	e.device("old-1")
	e.device("new-1")
	old, cur := e.mustDial5("old-1"), e.mustDial5("new-1")
	for _, c := range []struct {
		id  string
		fw  string
		pub func(string, []byte) byte
	}{
		{"old-1", "1.0.0", func(topic string, b []byte) byte { return publish5(t, old, topic, b) }},
		{"new-1", "1.2.0", func(topic string, b []byte) byte { return publish5(t, cur, topic, b) }},
	} {
		st := statusRec(c.id, 2)
		st.FW, st.FWSeq = c.fw, 7
		for _, rc := range []byte{
			c.pub(telemetryTopic(c.id), e.sign(c.id, spo2(c.id, 1))),
			c.pub("devices/"+c.id+"/status", e.signStatus(c.id, st)),
			c.pub(telemetryTopic(c.id), e.sign(c.id, spo2(c.id, 3))),
		} {
			if rc != 0 {
				t.Fatalf("%s: reason 0x%02x", c.id, rc)
			}
		}
	}
	if rc := publish5(t, old, telemetryTopic("old-1"), e.sign("new-1", spo2("old-1", 4))); rc != verdict.BadSignature.Code().Code {
		t.Fatalf("forged record: 0x%02x", rc)
	}

	devs := e.getDevices()
	d := devs["old-1"]
	if d.Model != "acme-oxi-1" || d.FW != "1.0.0" || d.FWSeq != 7 || !d.BelowMin || d.MinFirmware != "1.2.0" ||
		!d.CertNotAfter.Equal(e.deviceCert("old-1").NotAfter) || time.Since(d.LastSeen) > time.Minute ||
		d.Verdicts[inventory.Accepted] != 3 || d.Verdicts[string(verdict.BadSignature)] != 1 {
		t.Errorf("GET /devices old-1: %+v", d)
	}
	if d := devs["new-1"]; d.FW != "1.2.0" || d.BelowMin {
		t.Errorf("GET /devices new-1: %+v", d)
	}

	// Clinical data flows, marked from the status on.
	testutil.Eventually(t, 10*time.Second, "the four telemetry records at the app", func() bool {
		ids := a.ids()
		return ids["old-1:1"] == 1 && ids["old-1:3"] == 1 && ids["new-1:1"] == 1 && ids["new-1:3"] == 1
	})
	for id, want := range map[string]bool{"old-1:1": false, "old-1:3": true, "new-1:1": false, "new-1:3": false} {
		if m, _ := a.message(id); m.FWBelowMin != want {
			t.Errorf("%s: fw_below_min %v, want %v", id, m.FWBelowMin, want)
		}
	}

	rep := e.getAudit()
	if f, ok := finding(rep, posture.CheckFirmwareMin, "old-1"); !ok || f.Severity != posture.High {
		t.Errorf("firmware_minimum of old-1: %+v in %+v", f, rep.Findings)
	}
	if f, ok := finding(rep, posture.CheckFirmwareMin, "new-1"); ok {
		t.Errorf("new-1 at the minimum found: %+v", f)
	}
	testutil.Eventually(t, 10*time.Second, "the firmware_below_min event at the cloud", func() bool {
		return a.securityEvents(inventory.EventBelowMin, "old") == 1
	})
	if n := a.securityEvents(inventory.EventBelowMin, "new"); n != 0 {
		t.Errorf("%d firmware_below_min events of new-1", n)
	}

	// The retained entry: the latest says 1.0.0 and below the minimum.
	testutil.Eventually(t, 10*time.Second, "old-1's entry with its firmware at the cloud", func() bool {
		in := a.inventoryOf("old-1")
		return len(in) > 0 && in[len(in)-1].entry.FW == "1.0.0"
	})
	last := a.inventoryOf("old-1")
	if en := last[len(last)-1].entry; !en.BelowMin || en.Model != "acme-oxi-1" || en.GW != e.gw.ID() || en.MinFirmware != "1.2.0" {
		t.Errorf("entry of old-1: %+v", en)
	}
	// More messages change nothing material: only the update that follows
	// them is published.
	for seq := uint64(5); seq < 15; seq++ {
		if rc := publish5(t, old, telemetryTopic("old-1"), e.sign("old-1", spo2("old-1", seq))); rc != 0 {
			t.Fatalf("old-1 seq %d: 0x%02x", seq, rc)
		}
	}
	st := statusRec("old-1", 15)
	st.FW, st.FWSeq = "1.2.0", 8
	if rc := publish5(t, old, "devices/old-1/status", e.signStatus("old-1", st)); rc != 0 {
		t.Fatalf("old-1 status after its update: 0x%02x", rc)
	}
	if rc := publish5(t, old, telemetryTopic("old-1"), e.sign("old-1", spo2("old-1", 16))); rc != 0 {
		t.Fatal("old-1 seq 16")
	}
	testutil.Eventually(t, 10*time.Second, "old-1's updated entry at the cloud", func() bool {
		in := a.inventoryOf("old-1")
		return len(in) > 0 && in[len(in)-1].entry.FW == "1.2.0"
	})
	if in := a.inventoryOf("old-1"); len(in) != len(last)+1 || in[len(in)-1].entry.BelowMin {
		t.Errorf("entries of old-1 after ten messages and an update: %+v, want one more than %d, not below", in, len(last))
	}
	testutil.Eventually(t, 10*time.Second, "old-1:16 at the app", func() bool { return a.ids()["old-1:16"] == 1 })
	if m, _ := a.message("old-1:16"); m.FWBelowMin {
		t.Error("old-1:16 marked after the update")
	}
	if _, ok := finding(e.gw.auditor.Run(), posture.CheckFirmwareMin, "old-1"); ok {
		t.Error("old-1 still found below the minimum after its update")
	}
}

// TestInventoryAcrossRestarts: the inventory survives a restart with its
// counts, and its retained entries are not published again when nothing
// changed (a reconnect with the same certificate included); a new
// min_firmware at the next start judges the loaded devices at once: a
// firmware_below_min event, the entry published again, marked, and the
// device's first record after the restart marked before it sends any
// status.
func TestInventoryAcrossRestarts(t *testing.T) {
	const dev = "inv-9"
	e := newEnv(t, func(c *config.Config) { c.Audit.Interval = time.Hour })
	e.device(dev)
	a := e.app("ssl://" + e.gw.Cloud().AppsAddr())
	c := e.mustDial5(dev)
	st := statusRec(dev, 1)
	if rc := publish5(t, c, "devices/"+dev+"/status", e.signStatus(dev, st)); rc != 0 {
		t.Fatalf("status: 0x%02x", rc)
	}
	if rc := publish5(t, c, telemetryTopic(dev), e.sign(dev, spo2(dev, 2))); rc != 0 {
		t.Fatalf("seq 2: 0x%02x", rc)
	}
	testutil.Eventually(t, 10*time.Second, "the entry at the app", func() bool {
		in := a.inventoryOf(dev)
		return len(in) > 0 && in[len(in)-1].entry.FW == "1.0.0"
	})
	testutil.Eventually(t, 10*time.Second, "the entry acknowledged", func() bool { return e.gw.relay.Retaining() == 0 })
	c.Disconnect(&paho5.Disconnect{})

	e.gw.Close()
	e.start()
	a = e.app("ssl://" + e.gw.Cloud().AppsAddr())
	c = e.mustDial5(dev)
	if rc := publish5(t, c, telemetryTopic(dev), e.sign(dev, spo2(dev, 3))); rc != 0 {
		t.Fatalf("seq 3: 0x%02x", rc)
	}
	testutil.Eventually(t, 10*time.Second, "seq 3 at the app", func() bool { return a.ids()[dev+":3"] == 1 })
	testutil.Eventually(t, 10*time.Second, "nothing waiting at the relay", func() bool { return e.gw.relay.Retaining() == 0 })
	if in := a.inventoryOf(dev); len(in) != 1 || !in[0].retained || in[0].entry.FW != "1.0.0" {
		t.Fatalf("after a restart and a reconnect: %+v, want only the retained entry", in)
	}
	if d := e.getDevices()[dev]; d.Verdicts[inventory.Accepted] != 3 || d.FW != "1.0.0" || d.Model != "acme-oxi-1" {
		t.Fatalf("GET /devices after a restart: %+v", d)
	}
	c.Disconnect(&paho5.Disconnect{})

	e.gw.Close()
	e.cfg.MinFirmware = map[string]string{"acme-oxi-1": "1.2.0"}
	e.start()
	a = e.app("ssl://" + e.gw.Cloud().AppsAddr())
	testutil.Eventually(t, 10*time.Second, "the entry marked by the new minimum", func() bool {
		in := a.inventoryOf(dev)
		return len(in) > 0 && in[len(in)-1].entry.BelowMin && in[len(in)-1].entry.MinFirmware == "1.2.0"
	})
	// The event is written at the start, before this app subscribes (a
	// security event is not retained): it is looked for in the audit log.
	testutil.Eventually(t, 10*time.Second, "the firmware_below_min event of the new minimum", func() bool {
		return e.auditEvents(inventory.EventBelowMin, dev) == 1
	})
	c = e.mustDial5(dev)
	if rc := publish5(t, c, telemetryTopic(dev), e.sign(dev, spo2(dev, 4))); rc != 0 {
		t.Fatalf("seq 4: 0x%02x", rc)
	}
	testutil.Eventually(t, 10*time.Second, "seq 4 at the app", func() bool { return a.ids()[dev+":4"] == 1 })
	if m, _ := a.message(dev + ":4"); !m.FWBelowMin {
		t.Error("the first record after the restart not marked")
	}
}
