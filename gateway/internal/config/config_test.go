package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/cli"
	"github.com/vitalgate/vitalgate/internal/envelope"
	"gopkg.in/yaml.v3"
)

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatal(err)
	}
}

// load reads a file over the defaults, as the gateway does.
func load(path string) (Config, error) {
	c := Default()
	err := cli.LoadYAML(path, &c)
	return c, err
}

func TestLoad(t *testing.T) {
	p := filepath.Join(t.TempDir(), "gw.yaml")
	os.WriteFile(p, []byte("listen: 0.0.0.0:9883\ncloud: [ssl://a:8883, ssl://b:8883]\nmax_age: 48h\nrate:\n  messages: 5\nqueue:\n  commit_delay: 2ms\n"), 0o600)
	c, err := load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "0.0.0.0:9883" || len(c.Cloud) != 2 || c.MaxAge != 48*time.Hour || c.Rate.Messages != 5 || c.Rate.Burst != 200 ||
		c.Queue.CommitDelay != 2*time.Millisecond || c.Queue.MaxRecords != 1_000_000 {
		t.Fatalf("loaded %+v", c)
	}
	os.WriteFile(p, []byte("listn: x\n"), 0o600)
	if _, err := load(p); err == nil || !strings.Contains(err.Error(), "listn") {
		t.Fatalf("unknown key: %v", err)
	}
	os.WriteFile(p, nil, 0o600)
	if _, err := load(p); err != nil {
		t.Fatalf("empty file: %v", err)
	}
}

func TestValidateReportsEverything(t *testing.T) {
	c := Default()
	c.Listen = "nope"
	c.Cloud = []string{"http://x:1", "ssl://host", "ssl://:8883"}
	c.Format = "xml"
	c.MaxPacket = c.MaxPayload
	c.Curves = []string{"X448"}
	c.HTTP, c.Pprof = "", true
	c.Queue.CommitDelay = time.Second
	c.MaxSeqJump = 10
	c.HTTPS = "8443"
	c.Enroll = Enroll{Validity: time.Second, Rate: 0, Burst: 0}
	err := c.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, key := range []string{"listen:", `"http://x:1": scheme must be tcp, mqtt, ssl, tls, mqtts`, "port required", "host required", "format:", "max_packet:", "curves:", "pprof:", "queue.commit_delay:", "max_seq_jump:", "https:", "enroll.validity:", "enroll: rate and burst"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("missing %q in:\n%v", key, err)
		}
	}
}

// Every scheme the relay dials is valid, and only those: mqtt:// and tls://
// were accepted by the relay while validation refused mqtt:// and did not
// name tls://.
func TestCloudSchemes(t *testing.T) {
	for _, scheme := range []string{"tcp", "mqtt", "ssl", "tls", "mqtts"} {
		c := Default()
		c.Cloud = []string{scheme + "://cloud.example:8883"}
		if err := c.Validate(); err != nil {
			t.Errorf("%s://: %v", scheme, err)
		}
	}
	for _, scheme := range []string{"ws", "wss", "http"} {
		c := Default()
		c.Cloud = []string{scheme + "://cloud.example:8883"}
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "scheme must be tcp, mqtt, ssl, tls, mqtts") {
			t.Errorf("%s://: %v, want the schemes listed", scheme, err)
		}
	}
}

func TestPprofOnlyOnLoopback(t *testing.T) {
	for _, c := range []struct {
		http string
		ok   bool
	}{
		{"127.0.0.1:9100", true}, {"[::1]:9100", true}, {"localhost:9100", true},
		{"0.0.0.0:9100", false}, {":9100", false}, {"10.0.0.5:9100", false}, {"", false},
	} {
		cfg := Default()
		cfg.HTTP, cfg.Pprof = c.http, true
		err := cfg.Validate()
		if (err == nil) != c.ok {
			t.Errorf("http %q with pprof: %v, want ok=%v", c.http, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "pprof:") {
			t.Errorf("http %q: error %v does not name pprof", c.http, err)
		}
	}
}

// max_payload stops where the COSE parser and the record decoder stop, so a
// setting cannot promise messages they would refuse.
func TestMaxPayloadWithinTheParsers(t *testing.T) {
	for _, c := range []struct {
		n  int
		ok bool
	}{{255, false}, {256, true}, {envelope.MaxMessage, true}, {envelope.MaxMessage + 1, false}, {1 << 20, false}} {
		cfg := Default()
		cfg.MaxPayload, cfg.MaxPacket = c.n, c.n+1024
		cfg.Rate.ByteBurst = max(cfg.Rate.ByteBurst, c.n)
		err := cfg.Validate()
		if (err == nil) != c.ok || (err != nil && !strings.Contains(err.Error(), "max_payload:")) {
			t.Errorf("max_payload %d: %v, want ok=%v", c.n, err, c.ok)
		}
	}
}

// TestCloudAsString: `cloud` takes one string of URLs separated by commas as
// well as a list (a string was a type error naming Go types).
func TestCloudAsString(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"cloud: ssl://a:8883\n", "[ssl://a:8883]"},
		{"cloud: ssl://a:8883, tls://b:8883\n", "[ssl://a:8883 tls://b:8883]"},
		{"cloud: [ssl://a:8883, tls://b:8883]\n", "[ssl://a:8883 tls://b:8883]"},
		{"cloud: \"\"\n", "[]"},
	} {
		var c Config
		if err := yaml.Unmarshal([]byte(tc.doc), &c); err != nil || fmt.Sprint(c.Cloud) != tc.want {
			t.Errorf("%q: %v %v, want %s", tc.doc, c.Cloud, err, tc.want)
		}
	}
	var c Config
	if err := yaml.Unmarshal([]byte("cloud: {a: 1}\n"), &c); err == nil || !strings.Contains(err.Error(), "a list of URLs, or one string") {
		t.Errorf("a map: %v", err)
	}
}

func TestAnomalyKeys(t *testing.T) {
	p := filepath.Join(t.TempDir(), "gw.yaml")
	os.WriteFile(p, []byte("anomaly: {window: 2s, warmup: 20s, messages_floor: 30}\n"), 0o600)
	c, err := load(p)
	if err != nil {
		t.Fatal(err)
	}
	a := c.Anomaly
	if !a.Enabled || a.Window != 2*time.Second || a.Warmup != 20*time.Second || a.MessagesFloor != 30 || a.Factor != 3 || a.ReconnectsFloor != 60 {
		t.Fatalf("loaded %+v", a)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.Anomaly.Window, c.Anomaly.Warmup, c.Anomaly.Factor, c.Anomaly.RejectedFloor, c.Anomaly.MaxDevices = time.Millisecond, 0, 0.5, 2, 0
	err = c.Validate()
	for _, key := range []string{"anomaly.window:", "anomaly.warmup:", "factor must be at least 1", "rejected_floor within", "anomaly.max_devices:"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("missing %q in:\n%v", key, err)
		}
	}
}

// min_firmware is a map of model to semantic version, checked at load;
// inventory.max_devices must be positive.
func TestMinFirmware(t *testing.T) {
	p := filepath.Join(t.TempDir(), "gw.yaml")
	os.WriteFile(p, []byte("min_firmware:\n  acme-oxi-1: 1.3.0\n  acme-bpm-2: 2.0.0-rc.1\ninventory: {max_devices: 10}\n"), 0o600)
	c, err := load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.MinFirmware["acme-oxi-1"] != "1.3.0" || c.MinFirmware["acme-bpm-2"] != "2.0.0-rc.1" || c.Inventory.MaxDevices != 10 {
		t.Fatalf("loaded %+v %+v", c.MinFirmware, c.Inventory)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.MinFirmware["acme-oxi-1"], c.Inventory.MaxDevices = "1.3", 0
	err = c.Validate()
	for _, want := range []string{`min_firmware: model acme-oxi-1: "1.3" is not a semantic version`, "inventory.max_devices: must be positive"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
}

func TestClockKeys(t *testing.T) {
	p := filepath.Join(t.TempDir(), "gw.yaml")
	// true and false unquoted are YAML booleans: they must still read as
	// the words.
	for _, v := range []string{"true", "false", "auto", `"true"`} {
		os.WriteFile(p, []byte("clock:\n  require_sync: "+v+"\n  max_ahead: 720h\n"), 0o600)
		c, err := load(p)
		if err != nil {
			t.Fatal(err)
		}
		if c.Clock.RequireSync != strings.Trim(v, `"`) || c.Clock.MaxAhead != 720*time.Hour || c.Validate() != nil {
			t.Fatalf("require_sync %s: %+v, %v", v, c.Clock, c.Validate())
		}
	}
	c := Default()
	c.Clock = Clock{RequireSync: "yes", MaxAhead: time.Minute}
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), `clock.require_sync: "yes" is not auto, true, false`) ||
		!strings.Contains(err.Error(), "clock.max_ahead: 1m0s is under an hour") {
		t.Fatalf("bad clock keys: %v", err)
	}
}
