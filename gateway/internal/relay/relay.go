// Package relay moves queued telemetry from the gateway's on-disk queue to the
// cloud broker, at least once, and publishes the gateway's security events and
// status.
//
// # Delivery
//
// The relay reads queue entries in key order and publishes each one with QoS 1,
// keeping up to [Config.Window] publishes awaiting their PUBACK. An entry leaves
// the queue only after its PUBACK arrives (acked keys are removed in batches).
// When a connection ends, every unacknowledged entry is published again on the
// next connection, starting from the oldest entry still queued: consumers see
// duplicates (they drop them by the record's id), never a gap, and each device's
// records arrive in queue order.
//
// # Connections
//
// The relay owns its connection: MQTT 3.1.1, clean session (the queue is the
// durable state), no automatic reconnect. It tries [Config.URLs] in order and,
// when all fail, waits a fully jittered exponential backoff between
// [Config.BackoffMin] and [Config.BackoffMax] before the next round.
//
// # Status and events
//
// On each connection the relay publishes a retained "online" to
// gateways/{site}/{gw}/status, with a retained "offline" will; a graceful stop
// publishes a retained "offline" before disconnecting. [Relay.PublishEvent]
// sends security events to security/{site}/{gw} through a bounded buffer.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vitalgate/vitalgate/gateway/internal/spool"
	"github.com/vitalgate/vitalgate/internal/packetconn"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// Entry is one queued message: Key orders the queue, Data is a [wire.Frame] of topic and payload.
type Entry = spool.Entry

// Queue is what the relay needs from the gateway's durable queue; *spool.Queue
// implements it.
type Queue interface {
	// Peek returns up to max entries with keys greater than after, oldest first.
	Peek(after uint64, max int) ([]Entry, error)
	// Remove deletes entries once the cloud has acknowledged them; unknown keys are ignored.
	Remove(keys ...uint64) error
	// Notify is signalled (capacity 1, never blocking) after entries are appended.
	Notify() <-chan struct{}
}

// ErrRunning is returned by [Relay.Run] when the relay is already running.
var ErrRunning = errors.New("relay: already running")

var _ Queue = (*spool.Queue)(nil)

const (
	// removeBatch and removeDelay bound how many acked keys wait for one Remove.
	removeBatch = 256
	removeDelay = 10 * time.Millisecond
	// pollEvery re-reads the queue even without a Notify signal.
	pollEvery = time.Second
	// stableAfter is how long a connection must last to reset the backoff, so a
	// broker that accepts and drops at once is not hammered.
	stableAfter = 10 * time.Second
	// eventWindow bounds the events awaiting a PUBACK.
	eventWindow = 64
	// quiesceMS is paho's grace period for the DISCONNECT packet.
	quiesceMS = 250
)

// Relay publishes queued entries and security events to the cloud broker.
// Create it with [New] and start it with [Relay.Run].
type Relay struct {
	cfg         Config
	urls        []string
	q           Queue
	log         *slog.Logger
	m           metrics
	events      chan []byte
	statusTopic string
	eventTopic  string
	connected   atomic.Bool
	running     atomic.Bool

	// Acknowledged keys go to one remover goroutine, so waiting for the
	// queue's commit (which appends from devices share) never holds up
	// the window. removing holds the keys acknowledged but not yet removed;
	// a new connection does not send them again.
	removals chan []uint64
	rmMu     sync.Mutex
	removing map[uint64]struct{}

	// publish sends one telemetry entry QoS 1 (a seam for tests).
	publish func(c mqtt.Client, topic string, payload []byte) mqtt.Token
}

func publishQoS1(c mqtt.Client, topic string, payload []byte) mqtt.Token {
	return c.Publish(topic, 1, false, payload)
}

type metrics struct {
	connectedG                                prometheus.Gauge
	publishedC, ackedC, reconnectsC, droppedC prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (metrics, error) {
	var m metrics
	m.connectedG = prometheus.NewGauge(prometheus.GaugeOpts{Name: "vitalgate_relay_connected",
		Help: "1 while the relay is connected to the cloud broker."})
	m.publishedC = prometheus.NewCounter(prometheus.CounterOpts{Name: "vitalgate_relay_published_total",
		Help: "Telemetry messages published to the cloud, resends included."})
	m.ackedC = prometheus.NewCounter(prometheus.CounterOpts{Name: "vitalgate_relay_acked_total",
		Help: "Telemetry messages acknowledged by the cloud (PUBACK)."})
	m.reconnectsC = prometheus.NewCounter(prometheus.CounterOpts{Name: "vitalgate_relay_reconnects_total",
		Help: "Connections to the cloud established after the first one."})
	m.droppedC = prometheus.NewCounter(prometheus.CounterOpts{Name: "vitalgate_relay_events_dropped_total",
		Help: "Security events dropped because the event buffer was full (they remain in the audit log)."})
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.connectedG, m.publishedC, m.ackedC, m.reconnectsC, m.droppedC} {
		if err := reg.Register(c); err != nil {
			return m, fmt.Errorf("relay: register metrics: %w", err)
		}
	}
	return m, nil
}

// New checks cfg, applies its defaults and registers the metrics. q is the
// gateway's queue; the relay only peeks and removes.
func New(cfg Config, q Queue) (*Relay, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if q == nil {
		return nil, errors.New("relay: nil queue")
	}
	cfg = cfg.withDefaults()
	urls := make([]string, len(cfg.URLs))
	for i, u := range cfg.URLs {
		urls[i], _ = normaliseURL(u) // checked by Validate
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Relay{
		cfg:         cfg,
		urls:        urls,
		q:           q,
		log:         cfg.Logger.With("component", "relay"),
		m:           m,
		events:      make(chan []byte, cfg.EventBuffer),
		removals:    make(chan []uint64, 256),
		removing:    make(map[uint64]struct{}),
		statusTopic: "gateways/" + cfg.Site + "/" + cfg.GatewayID + "/status",
		eventTopic:  "security/" + cfg.Site + "/" + cfg.GatewayID,
		publish:     publishQoS1,
	}, nil
}

// Connected reports whether the relay holds a connection to the cloud broker.
func (r *Relay) Connected() bool { return r.connected.Load() }

// PublishEvent queues one security event payload (the JSON or CBOR event of
// docs/apps.md#security-events) for security/{site}/{gw} with QoS 1. It never blocks: when
// the buffer is full the event is dropped and vitalgate_relay_events_dropped_total
// counts it (events are also kept in the audit log). Events wait in the buffer
// while the relay is disconnected. The relay keeps payload; callers must not modify it.
func (r *Relay) PublishEvent(payload []byte) {
	select {
	case r.events <- payload:
	default:
		r.m.droppedC.Inc()
	}
}

// Run connects, relays until ctx is done, then waits up to [Config.DrainTimeout]
// for in-flight PUBACKs, removes the acknowledged entries, publishes the retained
// "offline" status and disconnects. It returns nil after a stop by ctx. Stop Run
// before closing the queue.
//
// If the connection died while a publish was being handed to paho, the
// goroutine making it can outlive Run by up to [Config.WriteTimeout]; it then
// returns without touching the queue.
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer r.running.Store(false)
	r.log.Info("relay starting", "urls", r.urls, "client_id", r.cfg.ClientID, "window", r.cfg.Window, "format", r.cfg.Format)
	quit, removed := make(chan struct{}), make(chan struct{})
	go r.removeLoop(quit, removed)
	defer func() { close(quit); <-removed }()
	attempt, sessions := 0, 0
	for ctx.Err() == nil {
		s, err := r.connect(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			d := r.backoff(attempt)
			attempt++
			r.log.Warn("cloud unreachable", "error", err, "retry_in", d)
			sleep(ctx, d)
			continue
		}
		if sessions > 0 {
			r.m.reconnectsC.Inc()
		}
		sessions++
		start := time.Now()
		r.serve(ctx, s)
		if ctx.Err() != nil {
			break
		}
		if time.Since(start) >= stableAfter {
			attempt = 0
		}
		d := r.backoff(attempt)
		attempt++
		r.log.Warn("cloud connection lost", "url", s.url, "reconnect_in", d)
		sleep(ctx, d)
	}
	r.log.Info("relay stopped")
	return nil
}

// removeLoop removes acknowledged entries, merging what has piled up into
// one Remove. After quit it removes what is still buffered and returns.
func (r *Relay) removeLoop(quit <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	var keys []uint64
	gather := func() {
		for len(keys) < 16*removeBatch {
			select {
			case b := <-r.removals:
				keys = append(keys, b...)
			default:
				return
			}
		}
	}
	for {
		select {
		case b := <-r.removals:
			keys = append(keys[:0], b...)
			gather()
			r.remove(keys)
		case <-quit:
			keys = keys[:0]
			gather()
			for len(keys) > 0 {
				r.remove(keys)
				keys = keys[:0]
				gather()
			}
			return
		}
	}
}

// remove deletes acknowledged entries from the queue. If that fails they
// stay queued and are sent again: a duplicate, never a loss.
func (r *Relay) remove(keys []uint64) {
	if err := r.q.Remove(keys...); err != nil {
		r.log.Error("queue remove failed; entries will be sent again", "error", err)
	}
	r.rmMu.Lock()
	for _, k := range keys {
		delete(r.removing, k)
	}
	r.rmMu.Unlock()
}

// removingKey reports whether k was acknowledged and awaits removal.
func (r *Relay) removingKey(k uint64) bool {
	r.rmMu.Lock()
	_, ok := r.removing[k]
	r.rmMu.Unlock()
	return ok
}

// backoff returns a full-jitter delay: uniform in [0, min(max, min*2^attempt)).
func (r *Relay) backoff(attempt int) time.Duration {
	ceil := r.cfg.BackoffMax
	if attempt < 30 {
		if d := r.cfg.BackoffMin << attempt; d > 0 && d < ceil {
			ceil = d
		}
	}
	return rand.N(ceil) + time.Millisecond
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// session is one MQTT connection and the goroutines that use it.
type session struct {
	url    string
	c      mqtt.Client
	dead   chan struct{} // closed when the connection is lost or must be dropped
	once   sync.Once
	reason atomic.Value // error
}

func (s *session) kill(err error) {
	s.once.Do(func() {
		s.reason.Store(err)
		close(s.dead)
	})
}

// connect tries every URL in order and returns the first session that is up
// and has published its "online" status.
func (r *Relay) connect(ctx context.Context) (*session, error) {
	var errs []error
	for _, u := range r.urls {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		s, err := r.dial(ctx, u)
		if err == nil {
			return s, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", u, err))
	}
	return nil, errors.Join(errs...)
}

func (r *Relay) dial(ctx context.Context, u string) (*session, error) {
	s := &session{url: u, dead: make(chan struct{})}
	// Our own dial so that a stop (ctx) interrupts a slow TCP connect or TLS handshake.
	// Writes are batched: the publishes paho writes while one write is in
	// progress leave together (one TLS record, one system call), and each
	// write is bounded by WriteTimeout.
	open := func(uri *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
		d := &net.Dialer{Timeout: r.cfg.ConnectTimeout, KeepAlive: r.cfg.KeepAlive}
		return packetconn.DialBatching(ctx, d, uri, r.cfg.TLS, r.cfg.WriteTimeout)
	}
	o := mqtt.NewClientOptions().
		AddBroker(u).
		SetClientID(r.cfg.ClientID).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(r.cfg.ConnectTimeout).
		SetKeepAlive(r.cfg.KeepAlive).
		SetWriteTimeout(r.cfg.WriteTimeout).
		SetOrderMatters(false).
		SetMaxResumePubInFlight(r.cfg.Window).
		SetCustomOpenConnectionFn(open).
		SetBinaryWill(r.statusTopic, []byte("offline"), 1, true).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			s.kill(fmt.Errorf("connection lost: %w", err))
		})
	s.c = mqtt.NewClient(o)
	tok := s.c.Connect()
	if !tok.WaitTimeout(r.cfg.ConnectTimeout + time.Second) {
		s.c.Disconnect(0)
		return nil, errors.New("connect: timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if err := r.status(s.c, "online"); err != nil {
		s.c.Disconnect(0)
		return nil, err
	}
	return s, nil
}

// status publishes the retained gateway status and waits for its PUBACK.
func (r *Relay) status(c mqtt.Client, state string) error {
	tok := c.Publish(r.statusTopic, 1, true, []byte(state))
	if !tok.WaitTimeout(r.cfg.WriteTimeout) {
		return fmt.Errorf("publish status %s: timed out", state)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("publish status %s: %w", state, err)
	}
	return nil
}

// inflight is one publish awaiting its PUBACK.
type inflight struct {
	key     uint64
	payload []byte // events only: re-buffered if the publish fails
	tok     mqtt.Token
}

// pipe carries in-flight publishes, in publish order, from a publisher to its
// acker. Either side may close it; put after close reports false. put never
// blocks because the publisher holds a window slot for every item.
type pipe struct {
	mu     sync.Mutex
	closed bool
	ch     chan inflight
}

func newPipe(n int) *pipe { return &pipe{ch: make(chan inflight, n)} }

func (p *pipe) put(x inflight) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.ch <- x
	return true
}

func (p *pipe) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.closed = true
		close(p.ch)
	}
}

// serve relays on one connection until it dies or ctx is done.
//
// Each session runs two publishers (telemetry, events) and their ackers. serve
// waits for the ackers only: they return promptly once the session ends, so
// acknowledged entries are removed before the next connection starts. A
// publisher may still be inside paho's Publish, which can block for up to
// WriteTimeout when the connection dies under it; it then finds the session
// over and returns, touching nothing but the dead client.
func (r *Relay) serve(ctx context.Context, s *session) {
	r.connected.Store(true)
	r.m.connectedG.Set(1)
	r.log.Info("cloud connected", "url", s.url)

	stop := make(chan struct{})  // no new publishes
	abort := make(chan struct{}) // stop waiting for PUBACKs
	slots, pending := make(chan struct{}, r.cfg.Window), newPipe(r.cfg.Window)
	evSlots, evPending := make(chan struct{}, eventWindow), newPipe(eventWindow)

	var ackers sync.WaitGroup
	go r.publishLoop(s, stop, slots, pending)
	go r.eventLoop(s, stop, evSlots, evPending)
	ackers.Go(func() { r.ackLoop(s, abort, slots, pending) })
	ackers.Go(func() { r.eventAckLoop(s, abort, evSlots, evPending) })

	graceful := false
	select {
	case <-s.dead:
	case <-ctx.Done():
		graceful = true
	}
	close(stop)
	if graceful {
		// Soft stop done; drain the PUBACKs of what is in flight, briefly.
		t := time.AfterFunc(r.cfg.DrainTimeout, func() { close(abort) })
		ackers.Wait()
		t.Stop()
		if err := r.status(s.c, "offline"); err != nil {
			r.log.Warn("offline status not published", "error", err)
		}
		s.c.Disconnect(quiesceMS)
	} else {
		close(abort)
		s.c.Disconnect(0) // makes sure paho is down if we killed the session ourselves
		ackers.Wait()
		if err, _ := s.reason.Load().(error); err != nil {
			r.log.Warn("cloud session ended", "url", s.url, "error", err)
		}
	}
	r.connected.Store(false)
	r.m.connectedG.Set(0)
}

// done reports whether c is closed.
func done(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// acquire takes a window slot, or reports false when the session is over.
func acquire(slots chan<- struct{}, stop, dead <-chan struct{}) bool {
	select {
	case slots <- struct{}{}:
	case <-stop:
		return false
	case <-dead:
		return false
	}
	return !done(stop) && !done(dead)
}

// publishLoop publishes queue entries in key order, at most Window awaiting PUBACK.
// It starts from the oldest queued entry, so a new connection resends all that
// the previous one left unacknowledged.
func (r *Relay) publishLoop(s *session, stop <-chan struct{}, slots chan struct{}, pending *pipe) {
	defer pending.close()
	var after uint64
	poll := time.NewTimer(pollEvery)
	defer poll.Stop()
	for !done(stop) && !done(s.dead) {
		entries, err := r.q.Peek(after, r.cfg.Window)
		if err != nil {
			r.log.Error("queue peek failed", "error", err)
		}
		if err != nil || len(entries) == 0 {
			poll.Reset(pollEvery)
			select {
			case <-stop:
				return
			case <-s.dead:
				return
			case <-r.q.Notify():
			case <-poll.C:
			}
			continue
		}
		for _, e := range entries {
			if r.removingKey(e.Key) {
				after = e.Key // acknowledged on an earlier connection
				continue
			}
			topic, payload, err := wire.Unframe(e.Data)
			if err != nil {
				// Unpublishable forever: keeping it would stall the queue.
				r.log.Error("dropping malformed queue entry", "key", e.Key, "dev", e.Dev, "seq", e.Seq, "error", err)
				if err := r.q.Remove(e.Key); err != nil {
					r.log.Error("queue remove failed", "error", err)
				}
				after = e.Key
				continue
			}
			if !acquire(slots, stop, s.dead) {
				return
			}
			tok := r.publish(s.c, topic, payload)
			r.m.publishedC.Inc()
			if !pending.put(inflight{key: e.Key, tok: tok}) {
				return
			}
			after = e.Key
			if failedAlready(tok) {
				// paho fails a publish it could not hand to its writer
				// within WriteTimeout, on a connection that may still be
				// up. Later entries must not overtake it: end the session
				// now, and the next one resends from this entry.
				s.kill(fmt.Errorf("publish: %w", tok.Error()))
				return
			}
		}
	}
}

// failedAlready reports whether tok completed with an error.
func failedAlready(tok mqtt.Token) bool {
	select {
	case <-tok.Done():
		return tok.Error() != nil
	default:
		return false
	}
}

// ackLoop waits for PUBACKs in publish order and removes acknowledged entries
// in batches. A failed publish kills the session, so the next one resends from
// the oldest unacknowledged entry and no later entry overtakes it. Once the
// session is dead or aborted it collects the PUBACKs already received and returns.
func (r *Relay) ackLoop(s *session, abort <-chan struct{}, slots <-chan struct{}, pending *pipe) {
	var acked []uint64
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var flushC <-chan time.Time
	flush := func() {
		flushC = nil
		timer.Stop()
		if len(acked) == 0 {
			return
		}
		batch := slices.Clone(acked)
		acked = acked[:0]
		r.rmMu.Lock()
		for _, k := range batch {
			r.removing[k] = struct{}{}
		}
		r.rmMu.Unlock()
		select {
		case r.removals <- batch:
		default: // the remover is far behind: wait for it here
			r.remove(batch)
		}
	}
	defer flush()
	waiting := true
	for {
		var p inflight
		ok := true
		if waiting {
			select {
			case p, ok = <-pending.ch:
			case <-flushC:
				flush()
				continue
			case <-s.dead:
				waiting = false
				continue
			case <-abort:
				waiting = false
				continue
			}
		} else {
			pending.close()
			p, ok = <-pending.ch // closed: drains what is left, then !ok
		}
		if !ok {
			return
		}
	wait:
		for waiting {
			select {
			case <-p.tok.Done():
				break wait
			case <-flushC:
				flush()
			case <-s.dead:
				waiting = false
			case <-abort:
				waiting = false
			}
		}
		<-slots
		switch {
		case !done(p.tok.Done()):
		case p.tok.Error() == nil:
			r.m.ackedC.Inc()
			acked = append(acked, p.key)
			if len(acked) >= removeBatch {
				flush()
			} else if flushC == nil {
				timer.Reset(removeDelay)
				flushC = timer.C
			}
		default:
			s.kill(fmt.Errorf("publish: %w", p.tok.Error()))
			waiting = false
		}
	}
}

// eventLoop publishes buffered security events, at most eventWindow awaiting PUBACK.
func (r *Relay) eventLoop(s *session, stop <-chan struct{}, slots chan struct{}, pending *pipe) {
	defer pending.close()
	for acquire(slots, stop, s.dead) {
		var ev []byte
		select {
		case ev = <-r.events:
		case <-stop:
			return
		case <-s.dead:
			return
		}
		if done(stop) || done(s.dead) {
			r.rebuffer(ev)
			return
		}
		tok := s.c.Publish(r.eventTopic, 1, false, ev)
		if !pending.put(inflight{payload: ev, tok: tok}) {
			r.rebuffer(ev)
			return
		}
	}
}

// eventAckLoop waits for the events' PUBACKs and re-buffers the events whose
// publish failed or was still unacknowledged when the session ended.
func (r *Relay) eventAckLoop(s *session, abort <-chan struct{}, slots <-chan struct{}, pending *pipe) {
	waiting := true
	for {
		var p inflight
		ok := true
		if waiting {
			select {
			case p, ok = <-pending.ch:
			case <-s.dead:
				waiting = false
				continue
			case <-abort:
				waiting = false
				continue
			}
		} else {
			pending.close()
			p, ok = <-pending.ch
		}
		if !ok {
			return
		}
		if waiting {
			select {
			case <-p.tok.Done():
			case <-s.dead:
				waiting = false
			case <-abort:
				waiting = false
			}
		}
		<-slots
		if !done(p.tok.Done()) || p.tok.Error() != nil {
			r.rebuffer(p.payload)
		}
	}
}

// rebuffer puts an unsent event back in the buffer, or drops and counts it.
func (r *Relay) rebuffer(ev []byte) {
	select {
	case r.events <- ev:
	default:
		r.m.droppedC.Inc()
	}
}
