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
// [Relay.Retain] publishes retained messages (the devices' certificate
// chains), the latest per topic, on every connection until acknowledged.
package relay

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/vitalgate/vitalgate/gateway/internal/spool"
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

// stableAfter is how long a connection must last to reset the backoff, so a
// broker that accepts and drops at once is not hammered.
const stableAfter = 10 * time.Second

// Relay publishes queued entries and security events to the cloud broker.
// Create it with [New] and start it with [Relay.Run].
type Relay struct {
	cfg         Config
	urls        []string
	q           Queue
	log         *slog.Logger
	m           metrics
	events      chan []byte
	ret         *retained
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
		ret:         newRetained(cfg.RetainBuffer),
		removals:    make(chan []uint64, 256),
		removing:    make(map[uint64]struct{}),
		statusTopic: "gateways/" + cfg.Site + "/" + cfg.GatewayID + "/status",
		eventTopic:  "security/" + cfg.Site + "/" + cfg.GatewayID,
		publish:     publishQoS1,
	}, nil
}

// Connected reports whether the relay holds a connection to the cloud broker.
func (r *Relay) Connected() bool { return r.connected.Load() }

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
