package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/vitalgate/vitalgate/internal/packetconn"
)

// quiesceMS is paho's grace period for the DISCONNECT packet.
const quiesceMS = 250

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
	if err := r.subscribe(s.c); err != nil {
		s.c.Disconnect(0)
		return nil, err
	}
	return s, nil
}

// subscribe subscribes to [Config.Subscriptions] (clean session: on every
// connection) and waits for the SUBACK. A filter the broker refuses fails
// the connection, which is retried like any other.
func (r *Relay) subscribe(c mqtt.Client) error {
	for _, sub := range r.cfg.Subscriptions {
		handle := sub.Handle
		tok := c.Subscribe(sub.Filter, 1, func(_ mqtt.Client, m mqtt.Message) {
			if len(m.Payload()) > MaxSubscribedPayload {
				r.log.Warn("cloud message dropped: too large", "topic", m.Topic(), "bytes", len(m.Payload()), "limit", MaxSubscribedPayload)
				return
			}
			handle(m.Topic(), m.Payload(), m.Retained())
		})
		if !tok.WaitTimeout(r.cfg.WriteTimeout) {
			return fmt.Errorf("subscribe %s: timed out", sub.Filter)
		}
		if err := tok.Error(); err != nil {
			return fmt.Errorf("subscribe %s: %w", sub.Filter, err)
		}
		if st, ok := tok.(*mqtt.SubscribeToken); ok {
			if code := st.Result()[sub.Filter]; code >= 0x80 {
				return fmt.Errorf("subscribe %s: refused by the broker (code %#x)", sub.Filter, code)
			}
		}
	}
	return nil
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
	ackers.Go(func() { ackLoop(s, abort, slots, pending, newTelemetryAcks(r, s)) })
	ackers.Go(func() { ackLoop(s, abort, evSlots, evPending, eventAcks{r}) })
	ackers.Go(func() { r.retainLoop(s, stop, abort) })

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

// outcome is what became of one publish when its acker settles it.
type outcome int

const (
	unacked outcome = iota // the session ended before the publish completed
	acked                  // PUBACK received
	failed                 // paho completed the publish with an error
)

// acker settles the publishes of one publisher, for [ackLoop].
type acker interface {
	// settle is called once per publish, in publish order, after its
	// window slot is given back. It reports whether to keep waiting for
	// PUBACKs: false when the outcome ends the session.
	settle(p inflight, o outcome) bool
	// due fires when the acker wants flush called; nil if never.
	due() <-chan time.Time
	// flush is called when due fires and once when ackLoop returns.
	flush()
}

// ackLoop waits for the PUBACKs of pending's publishes in publish order,
// gives their window slots back and settles each with a. Once the session
// is dead or aborted it stops waiting: it settles what is left (the PUBACKs
// already received as acked, the others as unacked), flushes and returns.
func ackLoop(s *session, abort <-chan struct{}, slots <-chan struct{}, pending *pipe, a acker) {
	defer a.flush()
	waiting := true
	for {
		var p inflight
		ok := true
		if waiting {
			select {
			case p, ok = <-pending.ch:
			case <-a.due():
				a.flush()
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
		if waiting {
			waiting = await(s, abort, p.tok, a)
		}
		<-slots
		if !a.settle(p, outcomeOf(p.tok)) {
			waiting = false
		}
	}
}

// await waits for tok to complete, flushing a when due. It reports false
// when the session ended or was aborted first.
func await(s *session, abort <-chan struct{}, tok mqtt.Token, a acker) bool {
	for {
		select {
		case <-tok.Done():
			return true
		case <-a.due():
			a.flush()
		case <-s.dead:
			return false
		case <-abort:
			return false
		}
	}
}

// outcomeOf reports what became of a publish so far.
func outcomeOf(tok mqtt.Token) outcome {
	switch {
	case !done(tok.Done()):
		return unacked
	case tok.Error() == nil:
		return acked
	default:
		return failed
	}
}
