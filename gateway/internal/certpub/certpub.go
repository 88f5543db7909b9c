// Package certpub publishes each device's certificate chain, retained, on
// certs/{site}/{device_id}, so that a consumer checks the devices'
// signatures end to end with the deployment's ca.crt alone, without the PKI
// directory.
//
// The payload is PEM text: the device's certificate, then the gateway's
// issuing CA when that CA signed it, then the device CA; everything between
// the device and the root (ca.crt), which consumers hold already.
//
// A [Publisher] is an ingest observer: when a device connects with a
// certificate whose chain differs from the last one the cloud acknowledged
// for it, the chain goes to the relay ([relay.Relay.Retain]), which
// publishes it QoS 1 and retained on every connection to the cloud until it
// is acknowledged, so a cloud that is down at the time gets it later. The
// fingerprints of the acknowledged chains are kept in a file of the data
// directory, so a restart publishes nothing twice; a chain whose
// acknowledgement a crash or a restart lost is published again at the
// device's next connection.
package certpub

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vitalgate/vitalgate/internal/verdict"
)

// File is the name, in the data directory, of the fingerprints of the
// chains the cloud acknowledged.
const File = "published-certs"

// DefaultMaxDevices bounds the devices remembered (and waiting) by default.
const DefaultMaxDevices = 100000

// saveEvery is how often changed fingerprints are written to [File].
const saveEvery = time.Second

// Retainer publishes a retained message through the relay; *relay.Relay
// implements it.
type Retainer interface {
	Retain(topic string, payload []byte, acked func()) bool
}

// Options configure a [Publisher]. Site, PKI and Relay are required.
type Options struct {
	Site  string   // the topic's {site}
	PKI   string   // the PKI directory: device-ca.crt, and issuing-ca.crt when present
	File  string   // the fingerprint file; "" keeps them in memory only
	Relay Retainer // where chains are published
	// MaxDevices bounds the devices remembered and waiting; default
	// DefaultMaxDevices. Beyond it a device's chain is still published,
	// but again at each of its connections.
	MaxDevices int
	Log        *slog.Logger
}

// Publisher publishes the chains of connecting devices. Create it with
// [New], run it with [Publisher.Run]; it is an ingest.Observer.
type Publisher struct {
	o       Options
	prefix  string // certs/{site}/
	notify  chan struct{}
	cas     *caSet
	dropped atomic.Uint64
	busy    atomic.Bool // drain is handling a batch
	saveMu  sync.Mutex  // one Save at a time, so the last snapshot is the last written

	mu        sync.Mutex
	pending   map[string]*x509.Certificate // device -> certificate it connected with, not yet handled
	published map[string][32]byte          // device -> fingerprint of the chain the cloud acknowledged
	leaves    map[string][32]byte          // device -> fingerprint of the certificate whose chain that is
	dirty     bool                         // published changed since the last save
}

// New loads the CA certificates and the fingerprints of o.File (a missing
// file is an empty one; an unreadable line is dropped with a warning, and
// its device's chain is then published again).
func New(o Options) (*Publisher, error) {
	if o.Site == "" || o.PKI == "" || o.Relay == nil {
		return nil, errors.New("certpub: Site, PKI and Relay are required")
	}
	if o.MaxDevices <= 0 {
		o.MaxDevices = DefaultMaxDevices
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	cas, err := loadCAs(o.PKI)
	if err != nil {
		return nil, err
	}
	p := &Publisher{o: o, prefix: "certs/" + o.Site + "/", notify: make(chan struct{}, 1), cas: cas,
		pending: map[string]*x509.Certificate{}, leaves: map[string][32]byte{}}
	if p.published, err = load(o.File, o.MaxDevices, o.Log); err != nil {
		return nil, err
	}
	return p, nil
}

// Connected queues the device's chain for a check; it never blocks.
func (p *Publisher) Connected(dev string, cert *x509.Certificate, _ string) {
	p.mu.Lock()
	if _, ok := p.pending[dev]; !ok && len(p.pending) >= p.o.MaxDevices {
		p.mu.Unlock()
		p.dropped.Add(1) // published at the device's next connection
		return
	}
	p.pending[dev] = cert
	p.mu.Unlock()
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

// Disconnected does nothing: the last chain stays published.
func (p *Publisher) Disconnected(string, *x509.Certificate, string) {}

// Verdict does nothing.
func (p *Publisher) Verdict(string, verdict.Verdict) {}

// Dropped counts connections whose chain was not checked because
// MaxDevices others were waiting.
func (p *Publisher) Dropped() uint64 { return p.dropped.Load() }

// Idle reports whether every connection so far has been handled (its chain
// found known, or handed to the relay).
func (p *Publisher) Idle() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending) == 0 && !p.busy.Load()
}

// Run handles connections until ctx is done, writing changed fingerprints
// at most every second and once more before it returns.
func (p *Publisher) Run(ctx context.Context) {
	tick := time.NewTicker(saveEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			p.Save()
			return
		case <-p.notify:
			p.drain()
		case <-tick.C:
			p.Save()
		}
	}
}

// drain handles every waiting connection.
func (p *Publisher) drain() {
	p.mu.Lock()
	batch := p.pending
	p.pending = map[string]*x509.Certificate{}
	p.busy.Store(true)
	p.mu.Unlock()
	defer p.busy.Store(false)
	for dev, leaf := range batch {
		p.handle(dev, leaf)
	}
}

// handle publishes dev's chain unless the cloud has it already.
func (p *Publisher) handle(dev string, leaf *x509.Certificate) {
	leafFP := sha256.Sum256(leaf.Raw)
	p.mu.Lock()
	known := p.leaves[dev] == leafFP
	p.mu.Unlock()
	if known {
		return // this certificate's chain is the one acknowledged
	}
	chain, err := p.cas.chain(leaf, time.Now())
	if err != nil {
		p.o.Log.Warn("device certificate chain not published", "dev", dev, "error", err)
		return
	}
	payload := encodePEM(chain)
	fp := sha256.Sum256(payload)
	p.mu.Lock()
	if p.published[dev] == fp {
		p.remember(p.leaves, dev, leafFP)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	p.o.Relay.Retain(p.prefix+dev, payload, func() { p.acked(dev, fp, leafFP) })
}

// acked records that the cloud holds dev's chain fp, of the certificate leafFP.
func (p *Publisher) acked(dev string, fp, leafFP [32]byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.remember(p.published, dev, fp) {
		p.remember(p.leaves, dev, leafFP)
		p.dirty = true
	}
}

// remember sets m[dev] within MaxDevices and reports whether it did.
func (p *Publisher) remember(m map[string][32]byte, dev string, fp [32]byte) bool {
	if _, ok := m[dev]; !ok && len(m) >= p.o.MaxDevices {
		return false
	}
	m[dev] = fp
	return true
}
