package server

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// BenchmarkDeviceRevocationToClose measures, on the real gateway with its
// file watch (no SIGHUP), the time from `certs revoke` writing crl.pem to
// the revoked device's live session being closed. Each revocation comes at
// a random point of the watch's one-second poll, so the mean is about half
// a poll plus the reload and the close; the worst case is one poll.
//
//	go test -run '^$' -bench DeviceRevocationToClose -benchtime 10x ./gateway/internal/server/
func BenchmarkDeviceRevocationToClose(b *testing.B) {
	e := newEnv(b, nil)
	var total time.Duration
	for i := range b.N {
		b.StopTimer()
		id := fmt.Sprintf("rev-%d", i)
		e.device(id)
		c := e.mustDial5(id)
		time.Sleep(time.Duration(rand.Int64N(int64(time.Second)))) // a random phase of the poll
		b.StartTimer()
		start := time.Now()
		if err := pki.Revoke(e.pki, id); err != nil {
			b.Fatal(err)
		}
		select {
		case <-c.Done():
		case <-time.After(10 * time.Second):
			b.Fatalf("%s still connected 10 s after its revocation", id)
		}
		total += time.Since(start)
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/revocation")
}
