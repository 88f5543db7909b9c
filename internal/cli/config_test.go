package cli

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

type testInner struct {
	Messages float64 `yaml:"messages"`
	Burst    int     `yaml:"burst"`
}

type testBase struct {
	PKI string `yaml:"pki"`
}

type testConfig struct {
	testBase `yaml:",inline"`
	Listen   string        `yaml:"listen"`
	Cloud    []string      `yaml:"cloud"`
	Wait     time.Duration `yaml:"wait"`
	Rate     testInner     `yaml:"rate"`
	Hidden   string        `yaml:"-"`
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// parseTest parses args with flags bound to a testConfig over defaults.
func parseTest(args ...string) (testConfig, error) {
	c := testConfig{testBase: testBase{PKI: "pki"}, Listen: "127.0.0.1:1", Wait: time.Second, Rate: testInner{Messages: 20, Burst: 200}}
	fs := flag.NewFlagSet("prog", flag.ContinueOnError)
	file := fs.String("config", "", "YAML file")
	fs.StringVar(&c.PKI, "pki", c.PKI, "PKI directory")
	fs.StringVar(&c.Listen, "listen", c.Listen, "address")
	ListVar(fs, &c.Cloud, "cloud", "`URLs`")
	fs.DurationVar(&c.Wait, "wait", c.Wait, "wait")
	err := ParseConfig(fs, args, &bytes.Buffer{}, file, &c)
	return c, err
}

// Defaults, then the file, then the flags given.
func TestParseConfigLayers(t *testing.T) {
	c, err := parseTest("--listen", "127.0.0.1:2")
	if err != nil || c.PKI != "pki" || c.Listen != "127.0.0.1:2" || c.Wait != time.Second || c.Cloud != nil {
		t.Fatalf("flags over defaults: %+v, %v", c, err)
	}
	p := writeFile(t, "pki: /etc/pki\nlisten: 0.0.0.0:3\ncloud: [ssl://a:1]\nrate:\n  burst: 5\n")
	c, err = parseTest("--config", p, "--listen", "127.0.0.1:2", "--cloud", " tcp://b:2, ,mqtt://c:3")
	if err != nil {
		t.Fatal(err)
	}
	want := testConfig{testBase: testBase{PKI: "/etc/pki"}, Listen: "127.0.0.1:2", Cloud: []string{"tcp://b:2", "mqtt://c:3"},
		Wait: time.Second, Rate: testInner{Messages: 20, Burst: 5}}
	if c.PKI != want.PKI || c.Listen != want.Listen || !slices.Equal(c.Cloud, want.Cloud) || c.Wait != want.Wait || c.Rate != want.Rate {
		t.Fatalf("flags over file over defaults: %+v, want %+v", c, want)
	}
	// Flags before --config are over the file too.
	if c, err := parseTest("--pki", "mine", "--config", p); err != nil || c.PKI != "mine" || c.Listen != "0.0.0.0:3" {
		t.Fatalf("flag before --config: %+v, %v", c, err)
	}
	if c, err := parseTest("--config", writeFile(t, "")); err != nil || c.PKI != "pki" {
		t.Fatalf("empty file: %+v, %v", c, err)
	}
	if _, err := parseTest("extra"); err == nil || err.Error() != `unexpected argument "extra" (see prog --help)` {
		t.Fatalf("positional argument: %v", err)
	}
	if _, err := parseTest("--config", filepath.Join(t.TempDir(), "none.yaml")); err == nil || !strings.HasPrefix(err.Error(), "read config: ") {
		t.Fatalf("missing file: %v", err)
	}
}

// A misspelt key names itself, its line and the keys valid there, in the
// terms of the file (no Go type names).
func TestLoadYAMLUnknownKey(t *testing.T) {
	for _, c := range []struct{ body, want string }{
		{"pki: x\nlistn: y\n", `line 2: unknown key "listn" (valid keys: pki, listen, cloud, wait, rate)`},
		{"rate:\n  burts: 3\n", `line 2: unknown key "rate.burts" (valid keys: rate.messages, rate.burst)`},
		{"hidden: x\n", `line 1: unknown key "hidden" (valid keys: pki, listen, cloud, wait, rate)`},
	} {
		p := writeFile(t, c.body)
		_, err := parseTest("--config", p)
		if err == nil || err.Error() != "config "+p+": "+c.want {
			t.Errorf("%q: %v, want %q", c.body, err, c.want)
		}
		if err != nil && (strings.Contains(err.Error(), "testConfig") || strings.Contains(err.Error(), "not found in type")) {
			t.Errorf("%q: %v names a Go type", c.body, err)
		}
	}
	// Other errors still come from the decoder, with the file's name.
	p := writeFile(t, "wait: soon\n")
	if _, err := parseTest("--config", p); err == nil || !strings.HasPrefix(err.Error(), "config "+p+": ") || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("bad value: %v", err)
	}
}
