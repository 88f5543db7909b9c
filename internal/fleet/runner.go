package fleet

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/vitalgate/vitalgate/internal/telemetry"
)

// entry is one message waiting in a device's buffer or in flight.
type entry struct {
	id       uint64 // order in the device's buffer
	topic    string
	payload  []byte
	rec      *telemetry.Record // a record to sign again after a renewal (enrolled devices)
	attack   bool              // an attack message: its code is counted against the expected one
	burst    bool              // rate_limited burst
	status   bool              // a status record, not a measurement
	attempts int
}

// result is the answer to one publish.
type result struct {
	gen  uint64 // connection generation it was sent on
	e    *entry
	code byte
	err  error
	rtt  time.Duration
}

type connectResult struct {
	c   client
	err error
}

// link is the state of a device's connection attempts.
type link struct {
	ch         chan connectResult
	connecting bool // an attempt is under way: its result comes on ch
	retry      *time.Timer
	retryC     <-chan time.Time // a reconnect is scheduled
}

// stopRetry cancels a scheduled reconnect.
func (l *link) stopRetry() {
	if l.retry != nil {
		l.retry.Stop()
	}
	l.retryC = nil
}

// runner drives one device: it owns all of its state; publishes and
// connection attempts run in goroutines that report back on channels.
type runner struct {
	f        *fleet
	id       string
	dev      *Device // nil for a revoked-certificate attacker
	key      crypto.Signer
	tls      *tls.Config
	v5       bool
	rng      *rand.Rand
	seqs     seqs
	att      *attacker // nil unless this device attacks
	rn       *renewal  // nil unless the device enrols
	up       *updater  // nil unless the device reports status and takes updates
	attacks  int       // attack messages (rate_limited: rejections) in the current minute
	minute   time.Time
	bursting int // rate_limited: burst messages still to make

	pending  []*entry
	inflight map[uint64]*entry
	nextID   uint64
	cl       client
	link     link
	gen      uint64
	failures int
	lastOK   []byte // payload of the last accepted message
	// olderOK was accepted before lastOK: what a replay attack resends (the
	// gateway acknowledges a resend of lastOK itself as a lost-PUBACK retry).
	olderOK []byte

	// holdC: sending is held after a 0x97 (quota exceeded) answer until it
	// fires; quota counts those answers in a row, for the backoff.
	holdC <-chan time.Time
	quota int

	results chan result
	done    chan struct{} // closed when run returns
}

// newRunner loads device i's certificate and key and restores its seq.
func (f *fleet) newRunner(i int, id string, ids []string, store *seqStore) (*runner, error) {
	cfg := f.cfg
	r, err := f.baseRunner(id, i)
	if err != nil {
		return nil, err
	}
	kind := cfg.Kinds[i%len(cfg.Kinds)]
	if r.dev, err = NewDevice(id, kind, cfg.Seed); err != nil {
		return nil, err
	}
	last, err := store.load(id)
	if err != nil {
		return nil, err
	}
	r.dev.SetSeq(last)
	r.seqs = seqs{store: store, id: id, reserved: last}
	if cfg.Updates {
		if r.up, err = newUpdater(id, ModelOf(kind), store.dirOrEmpty(), f.updatePub, cfg.HTTPS, r.tls, i < cfg.Attackers && cfg.Attack == AttackFailInstall); err != nil {
			return nil, err
		}
	}
	if i < cfg.Attackers && cfg.Attack != AttackRevoked && cfg.Attack != AttackFailInstall {
		other := ids[(i+1)%len(ids)]
		if other == id {
			other = id + "-x"
		}
		if r.att, err = newAttacker(cfg.Attack, r.key, other); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// newRevokedRunner is an attacker with a revoked certificate.
func (f *fleet) newRevokedRunner(id string) (*runner, error) {
	return f.baseRunner(id, -1)
}

func (f *fleet) baseRunner(id string, i int) (*runner, error) {
	cert, rn, err := f.deviceCert(id)
	if err != nil {
		return nil, err
	}
	key, ok := cert.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("device %s: key is not a signer", id)
	}
	tc := f.roots.Clone()
	tc.Certificates = []tls.Certificate{cert}
	// A session cache per device: a shared one would let a device resume
	// another device's session, and so its identity.
	tc.ClientSessionCache = tls.NewLRUClientSessionCache(1)
	v5 := f.cfg.MQTT == MQTT5 || f.cfg.MQTT == MQTTMix && i%2 == 0
	return &runner{
		f:        f,
		id:       id,
		rn:       rn,
		key:      key,
		tls:      tc,
		v5:       v5,
		rng:      rand.New(rand.NewPCG(deviceSeed(f.cfg.Seed, id), 0x5eed)),
		inflight: map[uint64]*entry{},
		link:     link{ch: make(chan connectResult, 1)},
		results:  make(chan result, f.cfg.Window),
		done:     make(chan struct{}),
	}, nil
}

func (r *runner) dialOptions() dialOptions {
	o := dialOptions{
		addr:       r.f.cfg.Gateway,
		tls:        r.tls,
		clientID:   r.id,
		v5:         r.v5,
		timeout:    r.f.cfg.Timeout,
		ackTimeout: r.f.cfg.AckTimeout,
		keepAlive:  60,
	}
	if r.up != nil {
		o.cmdTopic, o.onCommand = "devices/"+r.id+"/cmd/update", r.up.command
	}
	return o
}

// run is the device's life until ctx is done, or until stopGen is closed and
// its buffer is empty.
func (r *runner) run(ctx context.Context, stopGen <-chan struct{}) {
	defer close(r.done)
	switch {
	case r.dev == nil:
		r.runRevoked(ctx, stopGen)
	case r.att != nil && r.att.mode == AttackFlood:
		r.runFlood(ctx, stopGen)
	default:
		r.runRecords(ctx, stopGen)
	}
}

// runRecords is the life of a device that measures: it makes a message
// every tick, keeps a connection (reconnecting with backoff), renews its
// certificate when it enrols, and sends its buffer through the connection,
// until ctx is done, or until stopGen is closed and its buffer is empty.
func (r *runner) runRecords(ctx context.Context, stopGen <-chan struct{}) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	interval := time.Duration(float64(time.Second) / r.f.cfg.Rate)
	next := time.Now().Add(time.Duration(r.rng.Int64N(int64(interval) + 1))) // spread the fleet over one interval
	tick := time.NewTimer(time.Until(next))
	defer tick.Stop()
	tickC := tick.C
	r.begin(ctx)
	r.firstConnect(ctx)
	generating := true
	defer func() {
		r.link.stopRetry()
		r.rn.stop()
		cancel()
		r.stop()
	}()

	for {
		if !generating && len(r.pending) == 0 && len(r.inflight) == 0 && r.bursting == 0 {
			return
		}
		var lost <-chan struct{}
		if r.cl != nil {
			lost = r.cl.lost()
		}
		select {
		case <-ctx.Done():
			return
		case <-stopGen:
			stopGen, tickC, generating, r.bursting = nil, nil, false, 0
		case now := <-tickC:
			if r.flapDue(now) {
				r.disconnect()
				r.reconnectLater()
			}
			if err := r.generate(now); err != nil {
				r.f.log.Error("device stopped", "device", r.id, "err", err)
				return
			}
			r.scheduleNext(tick, &next, interval, now)
		case cr := <-r.link.ch:
			r.link.connecting = false
			if !r.connected(cr) {
				r.reconnectLater()
			}
		case <-lost:
			r.f.log.Debug("connection lost", "device", r.id)
			r.disconnect()
			r.failures++
			r.reconnectLater()
		case res := <-r.results:
			r.answered(res)
		case <-r.link.retryC:
			r.link.retryC = nil
			r.connect(ctx)
		case <-r.holdC:
			r.holdC = nil
		case <-r.rn.due():
			r.rn.start(ctx, r.f)
		case res := <-r.rn.results():
			r.rn.took(res, r.f.log.Warn)
		case rep := <-r.up.reported():
			r.reportUpdate(ctx, rep)
		}
		if !r.link.connecting {
			if switched, err := r.switchIdentity(); err != nil {
				r.f.log.Error("device stopped", "device", r.id, "err", err)
				return
			} else if switched {
				r.link.stopRetry()
				r.connect(ctx)
			}
		}
		r.pump(ctx)
	}
}

// begin starts the clocks of an attack and the updater's context.
func (r *runner) begin(ctx context.Context) {
	r.att.begin(r.f.cfg.AttackAfter)
	r.up.start(ctx)
}

// firstConnect connects, or, with Offline, schedules the first connection:
// the device measures into its buffer until then and sends the backlog.
func (r *runner) firstConnect(ctx context.Context) {
	if r.f.cfg.Offline > 0 {
		r.link.retry = time.NewTimer(r.f.cfg.Offline)
		r.link.retryC = r.link.retry.C
		return
	}
	r.connect(ctx)
}

// reconnectLater schedules a reconnect after the backoff.
func (r *runner) reconnectLater() {
	r.link.retry = time.NewTimer(r.backoff())
	r.link.retryC = r.link.retry.C
}

// scheduleNext sets tick for the record after the one made at now:
// interval after the last one (a burst shortens it), or, when the device
// fell behind (a slow machine), interval from now: it skips rather than
// bursts.
func (r *runner) scheduleNext(tick *time.Timer, next *time.Time, interval time.Duration, now time.Time) {
	step := r.tickInterval(interval, now)
	*next = next.Add(step)
	if d := time.Until(*next); d > 0 {
		tick.Reset(d)
		return
	}
	*next = time.Now().Add(step)
	tick.Reset(step)
}

// connected takes the outcome of a connection attempt: a failure is
// counted, a connection becomes the device's current one. It reports
// whether the device is connected now.
func (r *runner) connected(cr connectResult) bool {
	if cr.err != nil {
		r.countConnectError(cr.err)
		r.failures++
		return false
	}
	r.cl, r.failures = cr.c, 0
	r.gen++
	r.f.ctr.connects.Add(1)
	r.f.ctr.connected.Add(1)
	r.reportStatus(nil)
	return true
}

// stop ends a device's run once its context is cancelled: it waits for a
// connection attempt under way and closes what that got, closes the
// connection, and takes what is left in the buffer out of the fleet's
// buffered count.
func (r *runner) stop() {
	if r.link.connecting {
		if cr := <-r.link.ch; cr.c != nil {
			cr.c.close()
		}
	}
	r.disconnect()
	n := int64(len(r.pending) + len(r.inflight))
	r.f.ctr.buffered.Add(-n)
}

// backoff is the wait before reconnect attempt n: exponential from 250 ms
// to 30 s, with jitter of ±50 %.
func (r *runner) backoff() time.Duration {
	d := 250 * time.Millisecond << min(r.failures, 7)
	d = min(d, 30*time.Second)
	return time.Duration(float64(d) * (0.5 + r.rng.Float64()))
}

// connect dials in a goroutine, after the fleet's ramp admits it; the
// result comes on r.link.ch.
func (r *runner) connect(ctx context.Context) {
	r.link.connecting = true
	o, ch := r.dialOptions(), r.link.ch
	r.f.wg.Go(func() {
		if err := r.f.limiter.Wait(ctx); err != nil {
			ch <- connectResult{err: err}
			return
		}
		c, err := dialClient(ctx, o)
		ch <- connectResult{c: c, err: err}
	})
}

func (r *runner) countConnectError(err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	c := &r.f.ctr
	c.connectErrors.Add(1)
	var ce *connectError
	if errors.As(err, &ce) {
		switch ce.stage {
		case "tls":
			c.tlsRefused.Add(1)
		case "connack":
			c.connacks[ce.code].Add(1)
		}
	}
	r.f.log.Debug("connect failed", "device", r.id, "err", err)
}

// disconnect closes the connection and puts the messages in flight back at
// the head of the buffer, in order, to be resent.
func (r *runner) disconnect() {
	if r.cl == nil {
		return
	}
	r.cl.close()
	r.cl = nil
	r.f.ctr.connected.Add(-1)
	back := make([]*entry, 0, len(r.inflight))
	for _, e := range r.inflight {
		back = append(back, e)
	}
	slices.SortFunc(back, func(a, b *entry) int { return int(a.id - b.id) })
	clear(r.inflight)
	r.pending = append(back, r.pending...)
	r.trim()
}

// answered takes a publish's outcome. A failed publish drops the
// connection before its loss is reported (paho completes the tokens first),
// and with it the lost channel: the reconnect is scheduled here.
func (r *runner) answered(res result) {
	if r.handle(res) && !r.link.connecting && r.link.retryC == nil {
		r.reconnectLater()
	}
}

// budgetLeft reports whether the device may send another attack message this
// minute.
func (r *runner) budgetLeft(now time.Time) bool {
	if now.Sub(r.minute) >= time.Minute {
		r.minute, r.attacks = now, 0
	}
	return r.attacks < r.f.cfg.AttackBudget
}

// generate makes this tick's message: a record, or an attack.
func (r *runner) generate(now time.Time) error {
	if r.att != nil && r.att.mode == AttackRateLimited {
		if r.bursting == 0 && r.budgetLeft(now) {
			r.bursting = 3 * 200 // above the gateway's default burst of 200; stops early on rejections
		}
	}
	if err := r.seqs.ensure(r.dev.Seq() + 1); err != nil {
		return err
	}
	rec := r.dev.NextAt(now.Add(r.f.cfg.ClockSkew))
	e := &entry{topic: telemetryTopic(r.id), attack: r.att.active(AttackBurst, now)}
	if r.att != nil && r.att.crafts() && r.budgetLeft(now) {
		topic, payload, ok, err := r.att.craft(r.id, r.key, rec, r.olderOK, now)
		if err != nil {
			return err
		}
		if ok {
			r.attacks++
			e.topic, e.payload, e.attack = topic, payload, true
			r.add(e)
			return nil
		}
	}
	payload, err := SignRecord(r.key, r.id, &rec)
	if err != nil {
		return err
	}
	e.payload = payload
	if r.rn != nil {
		e.rec = &rec
	}
	r.add(e)
	return nil
}

// burstEntry makes one rate_limited burst message: a valid record sent at
// once.
func (r *runner) burstEntry() (*entry, error) {
	if err := r.seqs.ensure(r.dev.Seq() + 1); err != nil {
		return nil, err
	}
	rec := r.dev.NextAt(time.Now().Add(r.f.cfg.ClockSkew))
	payload, err := SignRecord(r.key, r.id, &rec)
	if err != nil {
		return nil, err
	}
	return &entry{topic: telemetryTopic(r.id), payload: payload, attack: true, burst: true}, nil
}

// pump sends buffered messages while the window has room.
func (r *runner) pump(ctx context.Context) {
	for r.cl != nil && r.holdC == nil && !r.rn.switching() && len(r.inflight) < r.f.cfg.Window {
		var e *entry
		switch {
		case len(r.pending) > 0:
			e = r.pending[0]
			r.pending[0] = nil
			r.pending = r.pending[1:]
		case r.bursting > 0:
			r.bursting--
			b, err := r.burstEntry()
			if err != nil {
				r.f.log.Error("burst", "device", r.id, "err", err)
				r.bursting = 0
				continue
			}
			r.add(b)
			continue
		default:
			return
		}
		e.attempts++
		if e.attempts > 1 {
			r.f.ctr.resent.Add(1)
		}
		r.inflight[e.id] = e
		// The goroutine reads no field of e: a renewal may sign the entry
		// again once it is back in the buffer.
		cl, gen, qos, topic, payload := r.cl, r.gen, r.f.cfg.QoS, e.topic, e.payload
		r.f.ctr.sent.Add(1)
		r.f.wg.Go(func() {
			start := time.Now()
			code, err := cl.publish(ctx, topic, qos, payload)
			res := result{gen: gen, e: e, code: code, err: err, rtt: time.Since(start)}
			select {
			case r.results <- res:
			case <-r.done:
			}
		})
	}
}

// handle takes the outcome of a publish. It reports whether it dropped the
// connection (a failed publish), after which the caller schedules a
// reconnect.
func (r *runner) handle(res result) (dropped bool) {
	if res.gen != r.gen || r.inflight[res.e.id] != res.e {
		return false // sent on an earlier connection: already back in the buffer
	}
	e := res.e
	c := &r.f.ctr
	if res.err != nil {
		c.errors.Add(1)
		r.f.log.Debug("publish failed", "device", r.id, "err", res.err)
		r.disconnect() // resend on a new connection
		r.failures++
		return true
	}
	delete(r.inflight, e.id)
	c.buffered.Add(-1)
	if e.status {
		c.statuses[min(res.code, 1)].Add(1) // not a record: apart from the record counters
		return false
	}
	c.answered.Add(1)
	if r.f.cfg.QoS == 0 {
		return false
	}
	c.latency.Record(res.rtt)
	c.codes[res.code].Add(1)
	if e.attack {
		c.attackSent.Add(1)
		c.attackCodes[res.code].Add(1)
		if r.f.hasExpect && res.code == r.f.expectCode {
			c.attackMatched.Add(1)
		}
	}
	switch {
	case res.code == 0x97 && !e.attack && r.v5:
		r.requeue(e) // the gateway kept nothing: resend later
	case res.code == 0:
		r.quota = 0
		c.acked.Add(1)
		if !e.attack || e.burst {
			r.olderOK, r.lastOK = r.lastOK, e.payload
		}
	case res.code == 0x83 && e.attempts > 1 && !e.attack:
		c.duplicates.Add(1) // stored before, its PUBACK was lost with the connection
	}
	if e.burst && res.code == r.f.expectCode {
		r.attacks++
		if !r.budgetLeft(time.Now()) {
			r.bursting = 0
		}
	}
	return false
}
