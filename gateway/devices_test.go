package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/gateway/internal/inventory"
	"github.com/vitalgate/vitalgate/gateway/internal/server"
	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"
)

// publishSigned connects device id to the gateway at addr and publishes
// each payload, signed with the device's key, on its topic (QoS 1).
func publishSigned(t *testing.T, dir, addr, id string, msgs map[string][]byte, order []string) {
	t.Helper()
	crt, key := pki.DevicePaths(dir, id)
	tc, err := pki.ClientTLS(filepath.Join(dir, pki.FileCA), crt, key)
	if err != nil {
		t.Fatal(err)
	}
	tc.ServerName = "localhost"
	c := mqtt3.NewClient(mqtt3.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(id).SetTLSConfig(tc).
		SetAutoReconnect(false).SetProtocolVersion(4).SetCleanSession(true))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	defer c.Disconnect(100)
	k, err := pki.LoadKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for _, topic := range order {
		msg, err := envelope.Sign(k, id, msgs[topic])
		if err != nil {
			t.Fatal(err)
		}
		if tok := c.Publish(topic, 1, false, msg); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %s: %v", topic, tok.Error())
		}
	}
}

// TestDevicesCommand: after a real gateway took a device's status and
// telemetry and stopped, `gateway devices` lists the device from the data
// directory, as JSON and as a table, judged by the configuration's
// min_firmware when one is given.
func TestDevicesCommand(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{Site: "site1", GatewayID: "gw1"}); err != nil {
		t.Fatal(err)
	}
	if err := pki.IssueDevice(dir, "oxi-7", pki.P256, 30); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.PKI, cfg.Listen, cfg.HTTP, cfg.HTTPS, cfg.Data = dir, "127.0.0.1:0", "", "", filepath.Join(t.TempDir(), "data")
	cfg.Embedded = config.Embedded{Apps: "127.0.0.1:0"}
	g, err := server.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(); err != nil {
		g.Close()
		t.Fatal(err)
	}
	now := time.Now().UnixMilli()
	st, err := telemetry.EncodeStatus(&telemetry.Status{V: 1, Dev: "oxi-7", Seq: 1, TS: now, Kind: "status", Model: "acme-oxi-1", FW: "1.4.2", FWSeq: 3})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := telemetry.Encode(&telemetry.Record{V: 1, Dev: "oxi-7", Seq: 2, TS: now, Kind: "spo2",
		Obs: []telemetry.Observation{{Code: "MDC_PULS_OXIM_SAT_O2", Val: telemetry.Scalar(97), Unit: "%"},
			{Code: "MDC_PULS_OXIM_PULS_RATE", Val: telemetry.Scalar(72), Unit: "/min"}}})
	if err != nil {
		t.Fatal(err)
	}
	publishSigned(t, dir, g.DeviceAddr(), "oxi-7", map[string][]byte{"devices/oxi-7/status": st, "devices/oxi-7/telemetry": rec},
		[]string{"devices/oxi-7/status", "devices/oxi-7/telemetry"})
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}

	code, stdout, stderr := runMain(t, "devices", "--json", "--data", cfg.Data)
	var list []inventory.Device
	if code != 0 || stderr != "" || json.Unmarshal([]byte(stdout), &list) != nil {
		t.Fatalf("gateway devices --json: exit %d, stderr %q, stdout %q", code, stderr, stdout)
	}
	if len(list) != 1 || list[0].ID != "oxi-7" || list[0].Model != "acme-oxi-1" || list[0].FW != "1.4.2" || list[0].FWSeq != 3 ||
		list[0].Verdicts[inventory.Accepted] != 2 || list[0].CertNotAfter.IsZero() || list[0].LastSeen.IsZero() || list[0].BelowMin {
		t.Fatalf("gateway devices --json: %+v", list)
	}

	file := filepath.Join(t.TempDir(), "gw.yaml")
	os.WriteFile(file, []byte("data: "+cfg.Data+"\nmin_firmware:\n  acme-oxi-1: 1.10.0\n"), 0o600)
	code, stdout, stderr = runMain(t, "devices", "--config", file)
	if code != 0 || stderr != "" || !strings.Contains(stdout, "ID") || !strings.Contains(stdout, "oxi-7") ||
		!strings.Contains(stdout, "1.4.2 (seq 3) BELOW MIN 1.10.0") || !strings.Contains(stdout, "accepted 2") ||
		!strings.Contains(stdout, "1 device in ") {
		t.Fatalf("gateway devices --config: exit %d, stderr %q, stdout:\n%s", code, stderr, stdout)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"devices", "--data", filepath.Join(t.TempDir(), "none")}, "no data directory"},
		{[]string{"devices", "--data", cfg.Data, "extra"}, `unexpected argument "extra"`},
	} {
		code, stdout, stderr := runMain(t, c.args...)
		if code != 1 || stdout != "" || !strings.Contains(stderr, c.want) {
			t.Errorf("gateway %v: exit %d, stdout %q, stderr %q; want 1 and %q", c.args, code, stdout, stderr, c.want)
		}
	}
	os.WriteFile(file, []byte("data: "+cfg.Data+"\nmin_firmware:\n  acme-oxi-1: latest\n"), 0o600)
	if code, _, stderr := runMain(t, "devices", "--config", file); code != 1 || !strings.Contains(stderr, `min_firmware: model acme-oxi-1: "latest" is not a semantic version`) {
		t.Errorf("bad min_firmware: exit %d, stderr %q", code, stderr)
	}
}
