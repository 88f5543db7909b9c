package bench

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCPUProfile fetches a profile from a stand-in for the gateway's
// operations listener and writes it to the file.
func TestCPUProfile(t *testing.T) {
	var asked string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked = r.URL.String()
		_, _ = w.Write([]byte("profile bytes"))
	}))
	defer srv.Close()
	g := &GatewayProc{&child{fields: map[string]string{"http": strings.TrimPrefix(srv.URL, "http://")}}}
	file := filepath.Join(t.TempDir(), "gw.pprof")
	if err := <-g.cpuProfile(context.Background(), file, time.Millisecond, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "profile bytes" {
		t.Errorf("file: %q, %v", b, err)
	}
	if asked != "/debug/pprof/profile?seconds=3" {
		t.Errorf("asked for %q", asked)
	}
	srv.Config.Handler = http.NotFoundHandler()
	if err := <-g.cpuProfile(context.Background(), file, time.Millisecond, time.Second); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("a missing profile endpoint: %v", err)
	}
}
