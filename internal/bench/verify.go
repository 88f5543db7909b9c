package bench

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vitalgate/vitalgate/internal/envelope"
)

// VerifyOnly checks the signatures of msgs (msgs[i] signed by devs[i]) with
// [envelope.Verifier], which is what the gateway calls per message, on
// workers goroutines (0: GOMAXPROCS) for about d (bounded by rounds passes
// over msgs when rounds > 0), and returns the number checked per second. It
// is the yardstick the validated rate is compared with: signature
// verification alone, one message at a time, of the same messages. EdDSA
// signatures are checked with Go's crypto/ed25519 here
// ([envelope.WithStdlibEd25519]), so that a gateway checking them in
// batches is measured against the single check.
func VerifyOnly(devs []*Identity, msgs [][]Msg, workers int, d time.Duration, rounds int) (float64, error) {
	type job struct {
		v   *envelope.Verifier
		msg []byte
	}
	var jobs []job
	for i, dev := range devs {
		v, err := envelope.NewVerifier(dev.Leaf.PublicKey, dev.ID, envelope.WithStdlibEd25519())
		if err != nil {
			return 0, fmt.Errorf("verifier of %s: %w", dev.ID, err)
		}
		for _, m := range msgs[i] {
			jobs = append(jobs, job{v, m.Payload})
		}
	}
	if len(jobs) == 0 {
		return 0, fmt.Errorf("verify-only: no messages")
	}
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	limit := int64(-1)
	if rounds > 0 {
		limit = int64(rounds * len(jobs))
	}
	var (
		next    atomic.Int64
		stop    atomic.Bool
		done    atomic.Int64
		wg      sync.WaitGroup
		failure atomic.Pointer[error]
	)
	start := time.Now()
	timer := time.AfterFunc(d, func() { stop.Store(true) })
	defer timer.Stop()
	for range workers {
		wg.Go(func() {
			for !stop.Load() {
				i := next.Add(1) - 1
				if limit >= 0 && i >= limit {
					return
				}
				j := jobs[i%int64(len(jobs))]
				if _, err := j.v.Verify(j.msg); err != nil {
					failure.CompareAndSwap(nil, &err)
					stop.Store(true)
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if p := failure.Load(); p != nil {
		return 0, fmt.Errorf("verify-only: %w", *p)
	}
	return Rate(uint64(done.Load()), elapsed), nil
}
