package firmware

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/gateway/internal/est"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// routeEnv is a store holding one fetched image and the firmware route on a real TLS listener (the
// gateway's certificate, devices authenticated by the EST server's trust), with dev-1 targeted.
type routeEnv struct {
	r      *repo
	img    []byte
	sha    string
	url    string // https://addr/firmware/SHA
	mu     sync.Mutex
	events []audit.Event
}

func newRouteEnv(t testing.TB, size int) *routeEnv {
	r := newRepo(t)
	e := &routeEnv{r: r, img: image(size, 9)}
	r.release("m", "1.0.0", e.img)
	s := r.store(r.serve(), t.TempDir())
	got, err := s.Fetch(context.Background(), "m", "1.0.0")
	check(t, err)
	e.sha = got.SHA256
	ca, err := pki.OpenIssuingCA(r.pki)
	check(t, err)
	log := slog.New(slog.DiscardHandler)
	es, err := est.New(est.Options{PKI: r.pki, Data: t.TempDir(), CA: ca, Rate: 1e6, Burst: 1e6, GatewayID: "gw1", Log: log,
		Event: func(audit.Event) {}})
	check(t, err)
	rt := &Route{Store: s, Device: es.Device, GatewayID: "gw1",
		Allowed: func(dev, sha string) bool { return dev == "dev-1" && sha == e.sha },
		Event: func(ev audit.Event) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.events = append(e.events, ev)
		}}
	tc, err := est.ServerTLS(r.pki)
	check(t, err)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tc)
	check(t, err)
	mux := http.NewServeMux()
	mux.Handle("GET "+Prefix, rt)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	e.url = "https://" + ln.Addr().String() + Prefix + e.sha
	return e
}

// device is an HTTPS client presenting a new certificate of device id.
func (e *routeEnv) device(t testing.TB, id string) *http.Client {
	t.Helper()
	if err := pki.IssueDevice(e.r.pki, id, pki.P256, 0); err != nil {
		t.Fatal(err)
	}
	cert, key := pki.DevicePaths(e.r.pki, id)
	tc, err := pki.ClientTLS(filepath.Join(e.r.pki, pki.FileCA), cert, key)
	check(t, err)
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, MaxIdleConnsPerHost: 1}}
}

func (e *routeEnv) denied() []audit.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []audit.Event
	for _, ev := range e.events {
		if ev.Verdict == EventDenied {
			out = append(out, ev)
		}
	}
	return out
}

// TestRangeResume: a download cut at half resumes with a Range request, and the two parts hash to the
// manifest's digest.
func TestRangeResume(t *testing.T) {
	e := newRouteEnv(t, 256<<10)
	c := e.device(t, "dev-1")
	res, err := c.Get(e.url)
	check(t, err)
	half := make([]byte, len(e.img)/2)
	_, err = io.ReadFull(res.Body, half)
	check(t, err)
	res.Body.Close() // the connection is cut
	req, _ := http.NewRequest(http.MethodGet, e.url, nil)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-", len(half)))
	req.Header.Set("If-Range", res.Header.Get("ETag"))
	res2, err := c.Do(req)
	check(t, err)
	defer res2.Body.Close()
	rest, err := io.ReadAll(res2.Body)
	check(t, err)
	if res2.StatusCode != http.StatusPartialContent {
		t.Fatalf("resume: status %d, want 206", res2.StatusCode)
	}
	if got := sha256.Sum256(append(half, rest...)); fmt.Sprintf("%x", got) != e.sha || !bytes.Equal(append(half, rest...), e.img) {
		t.Fatalf("resumed download hashes to %x, want %s", got, e.sha)
	}
	if n := len(e.denied()); n != 0 {
		t.Fatalf("%d update_denied events for a targeted device", n)
	}
}

func TestRouteRefusals(t *testing.T) {
	e := newRouteEnv(t, 4096)
	get := func(c *http.Client, url string) int {
		res, err := c.Get(url)
		check(t, err)
		res.Body.Close()
		return res.StatusCode
	}
	if st := get(e.device(t, "dev-2"), e.url); st != http.StatusForbidden {
		t.Fatalf("device not targeted: status %d, want 403", st)
	}
	dev1 := e.device(t, "dev-1")
	other := e.url[:len(e.url)-64] + fmt.Sprintf("%x", sha256.Sum256([]byte("other")))
	if st := get(dev1, other); st != http.StatusForbidden {
		t.Fatalf("image the device is not targeted by: status %d, want 403", st)
	}
	if st := get(dev1, e.url[:len(e.url)-64]+"..%2fetc"); st != http.StatusNotFound {
		t.Fatalf("bad path: status %d, want 404", st)
	}
	// No client certificate, or a gateway's (not a device's).
	tc, err := pki.ClientTLS(filepath.Join(e.r.pki, pki.FileCA), filepath.Join(e.r.pki, pki.FileGatewayClient), filepath.Join(e.r.pki, pki.FileGatewayClientKey))
	check(t, err)
	if st := get(&http.Client{Transport: &http.Transport{TLSClientConfig: tc}}, e.url); st != http.StatusForbidden {
		t.Fatalf("gateway certificate: status %d, want 403", st)
	}
	ev := e.denied()
	if len(ev) != 4 || ev[0].Dev != "dev-2" || ev[1].Dev != "dev-1" {
		t.Fatalf("update_denied events %+v, want 4 (dev-2, dev-1, dev-1, unknown)", ev)
	}
}
