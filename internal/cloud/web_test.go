package cloud

import (
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/webview"
)

func TestWebConfig(t *testing.T) {
	cfg := Default()
	cfg.WS, cfg.Web = "", "127.0.0.1:8443"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "web: needs ws") {
		t.Errorf("web without ws: %v", err)
	}
	cfg = Default()
	cfg.Web = cfg.WS
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "is also ws") {
		t.Errorf("web on the ws address: %v", err)
	}
	cfg = Default()
	cfg.WebAlerts = webview.Alerts{"spo": {}}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "web_alerts.spo: unknown measurement") {
		t.Errorf("unknown measurement: %v", err)
	}
}

// TestWebServed: the broker serves the web view, with ws's port in its
// configuration, and stops it on Close.
func TestWebServed(t *testing.T) {
	dir := testPKI(t)
	cfg := testConfig(dir, "")
	cfg.Web = "127.0.0.1:0"
	b, _ := startBroker(t, cfg)
	tc, err := pki.ClientTLS(filepath.Join(dir, pki.FileCA), "", "")
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
	resp, err := c.Get("https://" + b.WebAddr() + "/config.json")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	port := b.WSAddr()[strings.LastIndex(b.WSAddr(), ":")+1:]
	if !strings.Contains(string(body), `"ws_port":`+port+`,`) {
		t.Errorf("config.json %.80s does not name ws port %s", body, port)
	}
	addr := b.WebAddr()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	c.CloseIdleConnections()
	if _, err := c.Get("https://" + addr + "/"); err == nil {
		t.Error("web view still served after Close")
	}
}
