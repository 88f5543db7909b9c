package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/envelope"
)

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestLoad(t *testing.T) {
	p := filepath.Join(t.TempDir(), "gw.yaml")
	os.WriteFile(p, []byte("listen: 0.0.0.0:9883\ncloud: [ssl://a:8883, ssl://b:8883]\nmax_age: 48h\nrate:\n  messages: 5\nqueue:\n  commit_delay: 2ms\n"), 0o600)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "0.0.0.0:9883" || len(c.Cloud) != 2 || c.MaxAge != 48*time.Hour || c.Rate.Messages != 5 || c.Rate.Burst != 200 ||
		c.Queue.CommitDelay != 2*time.Millisecond || c.Queue.MaxRecords != 1_000_000 {
		t.Fatalf("loaded %+v", c)
	}
	os.WriteFile(p, []byte("listn: x\n"), 0o600)
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "listn") {
		t.Fatalf("unknown key: %v", err)
	}
	os.WriteFile(p, nil, 0o600)
	if _, err := Load(p); err != nil {
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
	err := c.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, key := range []string{"listen:", "scheme must be", "port required", "host required", "format:", "max_packet:", "curves:", "pprof:", "queue.commit_delay:", "max_seq_jump:"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("missing %q in:\n%v", key, err)
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
