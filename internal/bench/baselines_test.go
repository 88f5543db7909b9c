package bench

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary be the bare mochi relay of the baseline
// phase, as devicesim is in a real run: the harness starts its own
// executable with RelayCommand.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == RelayCommand {
		os.Exit(RelayMain(os.Args[2:], os.Stderr))
	}
	os.Exit(m.Run())
}

// TestBaselinePhases runs both baselines end to end on a tiny fleet: the
// cloud broker (built) and each relay as child processes, three devices,
// 20 messages each, phases of a second. Mosquitto's is skipped when it is
// not installed, unless VITALGATE_CI=1 (CI installs it).
func TestBaselinePhases(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the broker")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	var notices []string
	r := &run{cfg: Config{Devices: 3, Duration: time.Second, Kinds: []string{"spo2", "ecg"},
		Notice: func(l string) { notices = append(notices, l) }}.Defaults(), dir: dir}
	r.res.NProc = runtime.NumCPU()
	if FindMosquitto("") == "" && os.Getenv("VITALGATE_CI") == "1" {
		t.Fatal("mosquitto not found, and VITALGATE_CI=1: CI must install it (.ci/run)")
	}
	roots, err := r.issue()
	if err != nil {
		t.Fatal(err)
	}
	broker, err := BuildBroker(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if r.cloud, err = StartCloud(ctx, broker, r.pkiDir(), filepath.Join(dir, "cloud"), nil); err != nil {
		t.Fatal(err)
	}
	defer r.cloud.Stop()
	if err := r.subscribe(); err != nil {
		t.Fatal(err)
	}
	defer r.sub.Close()
	devs := r.devs[:r.cfg.Devices] // issue makes the storm's 64 too
	msgs, err := PreSign(devs, r.cfg.Kinds, 20, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	// Stand-ins for the gateway's figures, so the ratios are computed.
	r.res.Validated, r.res.PerGatewayCore = 100, 100
	if err := r.baselines(ctx, roots, devs, msgs); err != nil {
		t.Fatalf("%v\ncloud broker: %s", err, r.cloud.Tail())
	}
	// Each phase: the probe and 60 messages, at least once.
	want := uint64(2 * 61)
	if FindMosquitto("") == "" {
		want = 61
		if len(notices) != 1 || !strings.Contains(notices[0], "mosquitto baseline skipped") {
			t.Errorf("notices %q, want the skipped Mosquitto baseline", notices)
		}
	}
	if got := r.sub.Count(); got < want {
		t.Errorf("the app received %d messages, want at least %d", got, want)
	}
	res := Summarize([]Result{r.res})
	b, _ := json.Marshal(res)
	var m map[string]float64
	_ = json.Unmarshal(b, &m) // text fields fail to decode into float64, numbers do not
	keys := []string{"baseline_mochi_msgs_per_s", "validated_vs_baseline", "baseline_mochi_msgs_per_s_min",
		"baseline_mochi_msgs_per_s_max", "validated_vs_baseline_min", "validated_vs_baseline_max"}
	mosquitto := []string{"baseline_mosquitto_msgs_per_s", "validated_vs_mosquitto", "baseline_mosquitto_msgs_per_s_min",
		"baseline_mosquitto_msgs_per_s_max", "validated_vs_mosquitto_min", "validated_vs_mosquitto_max"}
	if FindMosquitto("") != "" {
		keys = append(keys, mosquitto...)
	} else {
		for _, k := range mosquitto {
			if _, ok := m[k]; ok {
				t.Errorf("without Mosquitto, the JSON line has %q", k)
			}
		}
	}
	for _, k := range keys {
		if v, ok := m[k]; !ok || v <= 0 {
			t.Errorf("%s = %v (present %v), want > 0", k, v, ok)
		}
	}
	if res.BaselineUndelivered+res.MosquittoUndelivered > 0 {
		t.Errorf("undelivered: mochi %d, mosquitto %d", res.BaselineUndelivered, res.MosquittoUndelivered)
	}
	t.Logf("%s", b)
}

// The Mosquitto configuration asks what the gateway asks of devices (a
// client certificate of the device CA, TLS 1.2 at least) and bridges to
// the cloud as the gateway does, onto topics the cloud's ACL allows.
func TestMosquittoConf(t *testing.T) {
	conf := mosquittoConf(4242, "/p", "/w/device-cas.pem", "127.0.0.1:8883", "site1", "gw1", 4096)
	for _, line := range []string{
		"listener 4242 127.0.0.1", "cafile /w/device-cas.pem", "certfile /p/gateway.crt", "keyfile /p/gateway.key",
		"require_certificate true", "tls_version tlsv1.2", "connection cloud", "address 127.0.0.1:8883",
		"remote_clientid gw1", "bridge_protocol_version mqttv311", "try_private false", "notifications false",
		"bridge_cafile /p/ca.crt", "bridge_certfile /p/gateway-client.crt", "bridge_keyfile /p/gateway-client.key",
		"bridge_tls_version tlsv1.2", "topic +/telemetry out 1 devices/ telemetry/site1/", "max_inflight_messages 4096",
	} {
		if !strings.Contains("\n"+conf, "\n"+line+"\n") {
			t.Errorf("mosquitto.conf lacks %q:\n%s", line, conf)
		}
	}
}
