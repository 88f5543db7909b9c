package server

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// startupFailure is one way a start can fail: setup breaks the
// configuration or its files and returns what the error must name once (a
// path or an address) and, optionally, a phrase it must contain.
type startupFailure struct {
	name  string
	setup func(t *testing.T, cfg *config.Config) (names, says string)
	check bool // --check-config sees it too (it binds no port and opens no queue)
}

var startupFailures = []startupFailure{
	{"data dir is a file", func(t *testing.T, cfg *config.Config) (string, string) {
		cfg.Data = writeFile(t, filepath.Join(t.TempDir(), "data"), "not a directory")
		return cfg.Data, "not a directory"
	}, true},
	{"queue.db is a directory", func(t *testing.T, cfg *config.Config) (string, string) {
		return mkdir(t, filepath.Join(cfg.Data, QueueFile)), "not a regular file"
	}, false},
	{"audit.log is a directory", func(t *testing.T, cfg *config.Config) (string, string) {
		return mkdir(t, filepath.Join(cfg.Data, AuditFile)), "is a directory"
	}, false},
	{"audit.log cut short", func(t *testing.T, cfg *config.Config) (string, string) {
		return writeFile(t, filepath.Join(cfg.Data, AuditFile), `{"n":1`), "incomplete"
	}, false},
	{"gateway client certificate missing", func(t *testing.T, cfg *config.Config) (string, string) {
		return remove(t, filepath.Join(cfg.PKI, pki.FileGatewayClient)), "no such file"
	}, true},
	{"gateway server certificate missing", func(t *testing.T, cfg *config.Config) (string, string) {
		return remove(t, filepath.Join(cfg.PKI, pki.FileGateway)), "no such file"
	}, true},
	{"gateway server key garbage", func(t *testing.T, cfg *config.Config) (string, string) {
		return writeFile(t, filepath.Join(cfg.PKI, pki.FileGatewayKey), "garbage"), "key"
	}, true},
	{"broker certificate missing", func(t *testing.T, cfg *config.Config) (string, string) {
		return remove(t, filepath.Join(cfg.PKI, pki.FileBroker)), "embedded cloud broker"
	}, true},
	{"bad CRL", func(t *testing.T, cfg *config.Config) (string, string) {
		return writeFile(t, filepath.Join(cfg.PKI, pki.FileCRL), "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"), "revocation list"
	}, true},
	{"CRL is a directory", func(t *testing.T, cfg *config.Config) (string, string) {
		p := remove(t, filepath.Join(cfg.PKI, pki.FileCRL))
		return mkdir(t, p), "is a directory"
	}, true},
	{"bad schema file", func(t *testing.T, cfg *config.Config) (string, string) {
		cfg.Schemas = writeFile(t, filepath.Join(t.TempDir(), "schemas.yaml"), "kinds: [unclosed\n")
		return cfg.Schemas, "schemas"
	}, true},
	{"busy listen port", func(t *testing.T, cfg *config.Config) (string, string) {
		cfg.Listen = busyAddr(t)
		return cfg.Listen, "device listener"
	}, false},
	{"busy http port", func(t *testing.T, cfg *config.Config) (string, string) {
		cfg.HTTP = busyAddr(t)
		return cfg.HTTP, "http listener"
	}, false},
	{"cloud URL without a host", func(t *testing.T, cfg *config.Config) (string, string) {
		cfg.Cloud = []string{"ssl://:8883"}
		return cfg.Cloud[0], "host"
	}, true},
}

// TestStartupErrorsSayEachThingOnce: each way a start can fail is one error
// that names the file or address once, says what went wrong, and repeats no
// phrase (it said "open queue: open queue PATH: open PATH: ..." and "relay:
// relay: URLs..."). --check-config reports what does not need a port or
// the queue in the same words.
func TestStartupErrorsSayEachThingOnce(t *testing.T) {
	for _, c := range startupFailures {
		t.Run(c.name, func(t *testing.T) {
			cfg := testConfig(t, newPKI(t))
			names, says := c.setup(t, &cfg)
			g, err := New(cfg, quietLog(t))
			if err == nil {
				g.Close()
				t.Fatal("New succeeded")
			}
			checkStartupError(t, "New", err, names, says)
			if !c.check {
				return
			}
			err = Check(cfg)
			if err == nil {
				t.Fatal("Check succeeded")
			}
			checkStartupError(t, "Check", err, names, says)
		})
	}
}

// TestSecondGatewayOnTheSameData: a gateway started on the data directory
// of a running one is told that another process holds the queue (it said
// "timeout").
func TestSecondGatewayOnTheSameData(t *testing.T) {
	e := newEnv(t, nil)
	cfg := e.cfg
	g, err := New(cfg, quietLog(t))
	if err == nil {
		g.Close()
		t.Fatal("a second gateway on the same data directory started")
	}
	checkStartupError(t, "New", err, filepath.Join(cfg.Data, QueueFile), "in use by another process")
}

func checkStartupError(t *testing.T, what string, err error, names, says string) {
	t.Helper()
	msg := err.Error()
	t.Logf("%s: %s", what, msg)
	if n := strings.Count(msg, names); n != 1 {
		t.Errorf("%s: the error names %q %d times, want once: %s", what, names, n, msg)
	}
	if !strings.Contains(msg, says) {
		t.Errorf("%s: the error does not say %q: %s", what, says, msg)
	}
	if p := repeatedPhrase(msg); p != "" {
		t.Errorf("%s: the error repeats %q: %s", what, p, msg)
	}
	if strings.Contains(msg, "timeout") {
		t.Errorf("%s: the error says timeout: %s", what, msg)
	}
}

var word = regexp.MustCompile(`[A-Za-z][A-Za-z.\-]*`)

// repeatedPhrase returns the first two-word phrase that occurs twice in msg
// ("open queue: open queue"), or a word that opens two adjacent parts
// ("read CRL: read PATH"), or "". Paths are not words (a temporary
// directory is named after the test).
func repeatedPhrase(msg string) string {
	var ws []string
	for _, f := range strings.Fields(strings.ToLower(msg)) {
		if !strings.Contains(f, "/") {
			ws = append(ws, word.FindAllString(f, -1)...)
		}
	}
	// A word that opens two adjacent parts: "schemas: schemas PATH".
	parts := strings.Split(strings.ToLower(msg), ": ")
	for i := 0; i+1 < len(parts); i++ {
		a, b := strings.Fields(parts[i]), strings.Fields(parts[i+1])
		if len(a) > 0 && len(b) > 0 && a[0] == b[0] {
			return a[0]
		}
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(ws); i++ {
		p := ws[i] + " " + ws[i+1]
		if seen[p] {
			return p
		}
		seen[p] = true
	}
	return ""
}

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func mkdir(t *testing.T, path string) string {
	t.Helper()
	if err := os.MkdirAll(path, 0o700); err != nil {
		t.Fatal(err)
	}
	return path
}

func remove(t *testing.T, path string) string {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	return path
}

// busyAddr is an address on which something listens until the test ends.
func busyAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}
