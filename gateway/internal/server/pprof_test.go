package server

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/vitalgate/vitalgate/gateway/internal/config"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

// /debug/pprof/ is served on the operations address only when configured.
func TestPprofOptIn(t *testing.T) {
	off := newEnv(t, nil)
	if code, _ := get(t, "http://"+off.gw.HTTPAddr()+"/debug/pprof/goroutine?debug=1"); code != http.StatusNotFound {
		t.Fatalf("pprof off: status %d, want 404", code)
	}
	on := newEnv(t, func(c *config.Config) { c.Pprof = true })
	code, body := get(t, "http://"+on.gw.HTTPAddr()+"/debug/pprof/goroutine?debug=1")
	if code != http.StatusOK || !strings.Contains(body, "goroutine profile:") {
		t.Fatalf("pprof on: status %d, body %.200q", code, body)
	}
	if code, _ := get(t, "http://"+on.gw.HTTPAddr()+"/metrics"); code != http.StatusOK {
		t.Fatalf("metrics with pprof on: status %d", code)
	}
}
