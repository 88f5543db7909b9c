package fleet

import (
	"context"
	"time"
)

// runRevoked connects with a revoked certificate about once a second and
// counts what the gateway does: refuse the handshake (expected) or accept it.
func (r *runner) runRevoked(ctx context.Context, stopGen <-chan struct{}) {
	c := &r.f.ctr
	if r.f.settle > 0 {
		t := time.NewTimer(r.f.settle)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
	for {
		if err := r.f.limiter.Wait(ctx); err != nil {
			return
		}
		c.attackSent.Add(1)
		cl, err := dialClient(ctx, r.dialOptions())
		if err != nil {
			r.countConnectError(err)
		} else {
			c.connects.Add(1)
			c.revokedConnected.Add(1)
			cl.close()
		}
		t := time.NewTimer(time.Duration(float64(time.Second) * (0.5 + r.rng.Float64())))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-stopGen:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// runFlood reconnects in a loop without waiting for the ramp, publishing a
// burst of records on every connection.
func (r *runner) runFlood(ctx context.Context, stopGen <-chan struct{}) {
	c := &r.f.ctr
	const burst = 20
	for {
		select {
		case <-ctx.Done():
			return
		case <-stopGen:
			return
		default:
		}
		cl, err := dialClient(ctx, r.dialOptions())
		if err != nil {
			r.countConnectError(err)
			t := time.NewTimer(time.Duration(50+r.rng.IntN(100)) * time.Millisecond) // refused: do not spin
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		c.connects.Add(1)
		c.connected.Add(1)
		for range burst {
			if err := r.seqs.ensure(r.dev.Seq() + 1); err != nil {
				break
			}
			rec := r.dev.Next()
			payload, err := SignRecord(r.key, r.id, &rec)
			if err != nil {
				break
			}
			c.generated.Add(1)
			c.sent.Add(1)
			start := time.Now()
			code, err := cl.publish(ctx, telemetryTopic(r.id), r.f.cfg.QoS, payload)
			if err != nil {
				c.errors.Add(1)
				break
			}
			c.answered.Add(1)
			c.attackSent.Add(1)
			if r.f.cfg.QoS == 1 {
				c.latency.Record(time.Since(start))
				c.codes[code].Add(1)
				c.attackCodes[code].Add(1)
				if code == 0 {
					c.acked.Add(1)
				}
			}
		}
		cl.close()
		c.connected.Add(-1)
	}
}
