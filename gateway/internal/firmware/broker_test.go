package firmware

import (
	"context"
	"log/slog"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/cloud"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// TestBrokerServesRepository: the cloud broker's --updates listener serves the repository to the gateway's
// store; no directory listing; a device certificate is refused at the handshake.
func TestBrokerServesRepository(t *testing.T) {
	r := newRepo(t)
	img := image(100<<10, 7)
	r.release("m", "3.0.0", img)
	cfg := cloud.Default()
	cfg.PKI, cfg.Listen, cfg.Apps, cfg.WS, cfg.HTTP, cfg.Data = r.pki, "127.0.0.1:0", "", "", "", ""
	cfg.Updates, cfg.Repo = "127.0.0.1:0", r.dir
	b, err := cloud.New(cfg, slog.New(slog.DiscardHandler))
	check(t, err)
	check(t, b.Start())
	t.Cleanup(func() { b.Close() })
	url := "https://" + b.UpdatesAddr()
	s := r.store(url, t.TempDir())
	if _, err := s.Fetch(context.Background(), "m", "3.0.0"); err != nil {
		t.Fatal(err)
	}
	res, err := s.o.Client.Get(url + "/targets/m/")
	check(t, err)
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound {
		t.Fatalf("directory: status %d, want 404", res.StatusCode)
	}
	check(t, pki.IssueDevice(r.pki, "dev-9", pki.P256, 0))
	cert, key := pki.DevicePaths(r.pki, "dev-9")
	tc, err := pki.ClientTLS(filepath.Join(r.pki, pki.FileCA), cert, key)
	check(t, err)
	dc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	if res, err := dc.Get(url + "/metadata/timestamp.json"); err == nil {
		res.Body.Close()
		t.Fatalf("device certificate served: status %d", res.StatusCode)
	}
}
