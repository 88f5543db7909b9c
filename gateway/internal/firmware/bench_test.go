package firmware

import (
	"io"
	"net/http"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// BenchmarkServeImage1000: 1,000 devices download one 1 MiB image at once from the firmware route, each over
// its own mutual-TLS connection (one device certificate for all, the handshake and route checks per
// connection and request). Reports MB/s and the peak heap in use (runtime.MemStats, sampled every 10 ms).
func BenchmarkServeImage1000(b *testing.B) {
	const devices, size = 1000, 1 << 20
	e := newRouteEnv(b, size)
	check(b, pki.IssueDevice(e.r.pki, "dev-1", pki.P256, 0))
	cert, key := pki.DevicePaths(e.r.pki, "dev-1")
	tc, err := pki.ClientTLS(filepath.Join(e.r.pki, pki.FileCA), cert, key)
	check(b, err)
	var peak atomic.Uint64
	stop := make(chan struct{})
	go func() {
		var ms runtime.MemStats
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > peak.Load() {
					peak.Store(ms.HeapInuse)
				}
			}
		}
	}()
	b.ResetTimer()
	for range b.N {
		var wg sync.WaitGroup
		var failed atomic.Int64
		for range devices {
			wg.Go(func() {
				c := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{TLSClientConfig: tc.Clone(),
					TLSHandshakeTimeout: 5 * time.Minute, DisableKeepAlives: true}}
				res, err := c.Get(e.url)
				if err != nil {
					failed.Add(1)
					return
				}
				n, _ := io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusOK || n != size {
					failed.Add(1)
				}
			})
		}
		wg.Wait()
		if n := failed.Load(); n > 0 {
			b.Fatalf("%d of %d downloads failed", n, devices)
		}
	}
	b.StopTimer()
	close(stop)
	b.SetBytes(devices * size)
	b.ReportMetric(float64(peak.Load())/(1<<20), "peak-heap-MiB")
}
