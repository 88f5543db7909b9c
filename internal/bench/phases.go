package bench

import (
	"context"
	"crypto/x509"
	"fmt"
	"sync/atomic"
	"time"
)

// memory holds cfg.Idle idle connections to the gateway and reads its
// resident memory and heap before and with them.
func (r *run) memory(ctx context.Context, roots *x509.CertPool) error {
	r.phase("gateway memory at rest")
	pid := r.gw.Pid()
	sleep(ctx, time.Second)
	p, err := ProcStat(pid)
	if err != nil {
		return err
	}
	r.res.RSSStart = p.RSS
	r.res.HeapStart = r.heap()
	var open atomic.Int64
	t0 := time.Now()
	r.setStatus(func() string {
		return fmt.Sprintf("idle connections %d/%d %.0fs", open.Load(), r.cfg.Idle, time.Since(t0).Seconds())
	})
	ic, err := Idle(ctx, r.gw.DeviceAddr(), roots, r.devs[:r.cfg.Idle], 64, func(n int) { open.Store(int64(n)) })
	if err != nil {
		return fmt.Errorf("idle connections: %w", err)
	}
	defer ic.Close()
	r.phase(fmt.Sprintf("holding %d idle connections", ic.Len()))
	sleep(ctx, 3*time.Second)
	if p, err = ProcStat(pid); err != nil {
		return err
	}
	r.res.RSSIdle = p.RSS
	r.res.HeapIdle = r.heap()
	r.res.Idle = ic.Len()
	if ic.Len() > 0 {
		r.res.RSSPerConn = round(float64(r.res.RSSIdle-r.res.RSSStart)/float64(ic.Len()), 0)
	}
	ic.Close()
	sleep(ctx, 2*time.Second) // let the gateway see the disconnects
	return nil
}

func (r *run) heap() int64 {
	v, err := r.gw.Metric("go_memstats_heap_inuse_bytes")
	if err != nil {
		return 0
	}
	return int64(v)
}

// storms measures full, then resumed, handshakes per second and the
// gateway's CPU time per handshake.
func (r *run) storms(ctx context.Context, roots *x509.CertPool) {
	workers := r.devs[:r.cfg.Workers]
	for _, resume := range []bool{false, true} {
		name := "reconnect storm, full handshakes"
		if resume {
			name = "reconnect storm, resumed handshakes"
		}
		r.phase(name)
		c0, _ := ProcStat(r.gw.Pid())
		res := Storm(ctx, r.gw.DeviceAddr(), roots, workers, resume, r.cfg.Storm)
		c1, _ := ProcStat(r.gw.Pid())
		us := 0.0
		if res.Connects > 0 {
			us = round(float64(c1.CPU-c0.CPU)/float64(time.Microsecond)/float64(res.Connects), 0)
		}
		r.res.StormFailed += res.Failed
		if r.res.StormError == "" {
			r.res.StormError = res.FirstErr
		}
		if resume {
			r.res.ResumedPerS, r.res.ResumedCPUus = round(res.PerSecond(), 0), us
			if res.Connects > 0 {
				r.res.ResumedShare = round(float64(res.Resumed)/float64(res.Connects), 3)
			}
		} else {
			r.res.FullPerS, r.res.FullCPUus = round(res.PerSecond(), 0), us
		}
	}
	sleep(ctx, time.Second)
}

// connect connects a fleet, showing progress.
func (r *run) connect(ctx context.Context, addr string, roots *x509.CertPool, devs []*Identity, to string) (*Devices, error) {
	var n atomic.Int64
	t0 := time.Now()
	r.setStatus(func() string {
		return fmt.Sprintf("connecting %d/%d devices to %s %.0fs", n.Load(), len(devs), to, time.Since(t0).Seconds())
	})
	return Connect(ctx, addr, roots, devs, 64, func(i int) { n.Store(int64(i)) })
}

// phaseResult is the steady-state outcome of one throughput phase.
type phaseResult struct {
	rate        float64 // deliveries per second, warm-up excluded
	acked       float64 // PUBACK 0x00 per second at the devices, same window
	undelivered uint64  // acknowledged to the devices, not delivered to the subscriber
	childShare  float64 // CPU share of the child process (pid), of all cores
	selfShare   float64 // CPU share of this process
	cloudShare  float64 // CPU share of the cloud broker's process
}

// drive runs one throughput phase: msgs from devices, paced to rate when
// rate > 0, for cfg.Duration or until they are all answered. Deliveries are
// counted by count; the rate is taken after a warm-up, up to the moment the
// fleet stops, and the delivered backlog is awaited (bounded) after it.
// With measure, the subscriber samples latencies after the warm-up.
func (r *run) drive(ctx context.Context, name string, d *Devices, msgs [][]Msg, rate float64, count func() uint64, pid int, measure func(bool)) (phaseResult, error) {
	var res phaseResult
	c0 := count()
	before := d.Counts()
	t0 := time.Now()
	var recent atomic.Uint64 // deliveries per second, last 500 ms, for the display
	r.setStatus(func() string {
		c := d.Counts()
		return fmt.Sprintf("%s %.1fs sent %d acked %d rejected %d delivered %d %d msg/s", name, time.Since(t0).Seconds(),
			c.Sent-before.Sent, c.Acked-before.Acked, c.Rejected-before.Rejected, count()-c0, recent.Load())
	})
	stop := make(chan struct{})
	timer := time.AfterFunc(r.cfg.Duration, func() { close(stop) })
	defer timer.Stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.Drive(ctx, msgs, rate, stop)
	}()

	warm := min(time.Second, r.cfg.Duration/5)
	var a *phaseMark
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	lastT, lastN := t0, c0
	for running := true; running; {
		select {
		case <-done:
			running = false
		case now := <-tick.C:
			if now.Sub(lastT) >= 500*time.Millisecond {
				n := count()
				recent.Store(uint64(Rate(n-lastN, now.Sub(lastT))))
				lastT, lastN = now, n
			}
			if a == nil && now.Sub(t0) >= warm {
				m := r.readMark(count, d, pid)
				a = &m
				if measure != nil {
					measure(true)
				}
			}
		case <-ctx.Done():
			<-done
			return res, ctx.Err()
		}
	}
	b := r.readMark(count, d, pid)
	if a == nil { // the fleet finished within the warm-up
		a = &phaseMark{t: t0, n: c0, acked: before.Acked}
	}
	dt := b.t.Sub(a.t)
	res.rate = Rate(b.n-a.n, dt)
	res.acked = Rate(b.acked-a.acked, dt)
	cores := float64(max(1, r.res.NProc))
	if pid > 0 && b.child.CPU > 0 {
		res.childShare = (b.child.CPU - a.child.CPU).Seconds() / dt.Seconds() / cores
	}
	if b.self.CPU > 0 && a.self.CPU > 0 {
		res.selfShare = (b.self.CPU - a.self.CPU).Seconds() / dt.Seconds() / cores
	}
	if b.cloud.CPU > 0 && a.cloud.CPU > 0 {
		res.cloudShare = (b.cloud.CPU - a.cloud.CPU).Seconds() / dt.Seconds() / cores
	}
	// Wait for what was acknowledged to be delivered.
	acked := d.Counts().Acked - before.Acked
	awaitDelivery(ctx, count, c0, acked)
	if measure != nil {
		measure(false)
	}
	if got := count() - c0; got < acked {
		res.undelivered = acked - got // acknowledged to the fleet, not delivered within 30 s
	}
	return res, ctx.Err()
}

// phaseMark is a reading taken during a throughput phase: deliveries, acknowledgements at the devices, and the
// CPU time of the measured child process (the gateway; none for the baseline), of this process and of the cloud
// broker.
type phaseMark struct {
	t     time.Time
	n     uint64
	acked uint64
	child Proc
	self  Proc
	cloud Proc
}

// readMark takes a phaseMark now: deliveries by count, acknowledgements of d, and the CPU time of the child
// process pid (when > 0), of this process and of the cloud broker (when started).
func (r *run) readMark(count func() uint64, d *Devices, pid int) phaseMark {
	m := phaseMark{t: time.Now(), n: count(), acked: d.Counts().Acked}
	if pid > 0 {
		m.child, _ = ProcStat(pid)
	}
	m.self, _ = ProcStat(0)
	if r.cloud != nil {
		m.cloud, _ = ProcStat(r.cloud.Pid())
	}
	return m
}

// awaitDelivery waits, at most 30 s, until count has grown from c0 by acked deliveries or ctx is done.
func awaitDelivery(ctx context.Context, count func() uint64, c0, acked uint64) {
	deadline := time.Now().Add(30 * time.Second)
	for count()-c0 < acked && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
