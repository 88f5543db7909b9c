// Package fhirexport consumes relayed telemetry from an MQTT broker and
// exports each record as FHIR R4 (internal/fhir): published on
// fhir/{site}/{device}, POSTed to a FHIR server, or both. The broker runs
// one connected to itself (the `fhir:` key of its configuration); `broker
// fhir` runs one against any MQTT broker.
//
// # At least once, from a durable position
//
// The exporter's MQTT session is persistent (clean session off, a fixed
// client ID) and it acknowledges a record (PUBACK) only once the record's
// Bundle is published and accepted by the FHIR server, so the broker keeps
// every record not yet exported in the session, across a crash or a
// restart of the exporter. Failures that may pass (the broker unreachable
// for a publish; a server's 5xx, 408, 429, 401 or 403, a timeout or a
// connection error) are retried with exponential backoff and jitter, up
// to [Config.MaxBackoff], for as long as it takes; after a 401 the token
// file is read again. A server's other 4xx is about the Bundle and for good:
// the record is logged, counted and acknowledged.
//
// # Idempotent
//
// Every Observation is a conditional create on its identifier, the Device
// a conditional update and the Provenance a PUT with a fixed id, so a
// record exported twice, by a redelivery or by a second exporter of the
// same group (a shared subscription, [Config.Group]), leaves the server as
// once.
//
// # What is exported
//
// A record whose device signature verified end to end gets a Provenance
// with the signature; one whose device has no certificate yet is exported
// without it. A record whose signature is bad, whose rec is not what the
// device signed, or whose device certificate is revoked is not exported
// (logged, counted). A device that the site's patient map lacks is
// exported without a subject, never dropped: counted, and logged and
// reported in a security event ([VerdictNoPatient], on [EventTopic]) once
// per device.
package fhirexport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vitalgate/vitalgate/internal/wire"
)

// Verdict is the outcome of a record's end-to-end signature check.
type Verdict int

// The verdicts of a [Checker].
const (
	// Verified: the device's signature over the record verified with its
	// certificate; the Bundle carries a Provenance.
	Verified Verdict = iota
	// Unverified: no certificate of the device is known yet; the record is
	// exported without a Provenance.
	Unverified
	// Rejected: a bad signature, a rec that is not the signed record, or a
	// revoked device certificate; the record is not exported.
	Rejected
)

// Checker checks records' device signatures end to end; the cloud
// package's Watcher is the implementation (cloud.FHIRChecker). It must be
// safe for concurrent use.
type Checker interface {
	// Check judges message m received on topic; detail says why when it
	// is not Verified.
	Check(topic string, m *wire.Message) (v Verdict, detail string)
	// Chain takes a certificate chain published on certs/{site}/{device};
	// an error says why it was refused.
	Chain(topic string, payload []byte) error
}

// Conn is how the exporter reaches its MQTT broker.
type Conn struct {
	// URL is the broker: ssl://, mqtts://, wss://, or with Dial any URL
	// that names it in logs.
	URL string
	// TLS is the client TLS configuration (nil with Dial).
	TLS *tls.Config
	// Username and Password, when the broker wants them (an app token is
	// the password at a VitalGate broker).
	Username, Password string
	// ClientID is the MQTT client ID, fixed: the persistent session under
	// it is the exporter's durable position.
	ClientID string
	// Dial, when set, opens the connection instead of URL (the broker's
	// own exporter connects in process).
	Dial func() (net.Conn, error)
}

// Options are the parts an [Exporter] works with.
type Options struct {
	Conn    Conn
	Checker Checker
	// Log receives the exporter's log lines (nil: slog.Default()).
	Log *slog.Logger
	// Registerer registers the exporter's metrics (nil: a registry of its
	// own, not served).
	Registerer prometheus.Registerer
	// MaxPublish, when above 0, is the largest Bundle published on fhir/:
	// the broker's maximum packet size less room for the PUBLISH header
	// ([PublishOverhead]). A broker refuses a larger PUBLISH (and closes
	// the connection), so retrying it would hold up every later record: a
	// larger Bundle is not published, only posted to the server if there
	// is one (logged, counted).
	MaxPublish int
}

// PublishOverhead is room enough for the header of a PUBLISH on
// fhir/{site}/{device} (fixed header, topic of at most 134 bytes, packet
// ID): a Bundle of up to the broker's maximum packet size less this fits.
const PublishOverhead = 256

// Exporter consumes telemetry and exports FHIR. Create it with [New] and
// run it with [Exporter.Run].
type Exporter struct {
	cfg    Config
	o      Options
	log    *slog.Logger
	m      *metrics
	srv    *server // nil without Config.Server
	in     chan paho.Message
	client paho.Client
	// ready is closed once the first connection's subscriptions are done:
	// the retained chains have arrived by then, so records queued in the
	// session wait for them rather than be checked without.
	ready     chan struct{}
	readyOnce sync.Once
	warned    sync.Map // site/device -> struct{}: no patient, logged once
	nWarned   int
	wmu       sync.Mutex
}

// maxWarned bounds the devices remembered as logged for having no patient.
const maxWarned = 10000

// New checks cfg and reads the server's CA and token files.
func New(cfg Config, o Options) (*Exporter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if o.Checker == nil || o.Conn.ClientID == "" || (o.Conn.URL == "" && o.Conn.Dial == nil) {
		return nil, errors.New("fhir exporter: a checker, a client ID and a broker URL are required")
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	e := &Exporter{cfg: cfg, o: o, log: o.Log.With("component", "fhir"), in: make(chan paho.Message, 2*cfg.Batch),
		ready: make(chan struct{})}
	var err error
	if e.m, err = newMetrics(o.Registerer); err != nil {
		return nil, err
	}
	if cfg.Server != "" {
		if e.srv, err = newServer(cfg); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// Run connects (retrying until the broker answers), subscribes to the
// configured sites' telemetry and certificate chains, and exports until
// ctx is done; then it disconnects. Records it had not finished are not
// acknowledged: the broker delivers them again.
func (e *Exporter) Run(ctx context.Context) error {
	e.client = paho.NewClient(e.clientOptions(ctx))
	t := e.client.Connect()
	select {
	case <-t.Done():
		if err := t.Error(); err != nil {
			return fmt.Errorf("fhir exporter: connect %s: %w", e.o.Conn.URL, err)
		}
	case <-ctx.Done():
	}
	defer e.client.Disconnect(250)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		e.work(ctx)
	}()
	<-ctx.Done()
	wg.Wait()
	if e.srv != nil {
		// The posts are over: their kept-alive connections would outlive
		// the exporter (two goroutines and a socket each).
		e.srv.client.CloseIdleConnections()
	}
	return nil
}

// clientOptions: a persistent session under the fixed client ID, manual
// acknowledgements, handlers on their own goroutines (they wait for the
// worker, which waits for PUBACKs), and a resubscription on every connect.
func (e *Exporter) clientOptions(ctx context.Context) *paho.ClientOptions {
	c := e.o.Conn
	o := paho.NewClientOptions().AddBroker(strings.Replace(c.URL, "mqtts://", "ssl://", 1)).SetClientID(c.ClientID).
		SetCleanSession(false).SetAutoAckDisabled(true).SetOrderMatters(false).SetProtocolVersion(4).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(time.Second).
		SetMaxReconnectInterval(10 * time.Second).SetConnectTimeout(10 * time.Second).SetKeepAlive(30 * time.Second).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { e.receive(ctx, m) }).
		SetOnConnectHandler(e.subscribe).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			e.log.Warn("connection lost (reconnecting)", "broker", c.URL, "error", err)
		})
	if c.TLS != nil {
		o.SetTLSConfig(c.TLS)
	}
	if c.Username != "" || c.Password != "" {
		o.SetUsername(c.Username).SetPassword(c.Password)
	}
	if c.Dial != nil {
		o.SetCustomOpenConnectionFn(func(*url.URL, paho.ClientOptions) (net.Conn, error) { return c.Dial() })
	}
	return o
}

// subscribe subscribes, on every connect, to each site's certificate
// chains first (retained: they arrive before the SUBACKs that follow),
// then to its telemetry, shared in the group when there is one. Messages
// go to the default handler. The worker starts after the first.
func (e *Exporter) subscribe(c paho.Client) {
	defer e.readyOnce.Do(func() { close(e.ready) })
	var filters []string
	for _, site := range e.cfg.Sites {
		filters = append(filters, "certs/"+site+"/#")
	}
	for _, site := range e.cfg.Sites {
		f := "telemetry/" + site + "/#"
		if e.cfg.Group != "" {
			f = "$share/" + e.cfg.Group + "/" + f
		}
		filters = append(filters, f)
	}
	for _, f := range filters {
		t := c.Subscribe(f, 1, nil)
		if !t.WaitTimeout(10*time.Second) || t.Error() != nil {
			e.log.Error("subscribe failed", "filter", f, "error", t.Error())
			return
		}
		if code := t.(*paho.SubscribeToken).Result()[f]; code >= 0x80 {
			e.log.Error("subscription refused", "filter", f, "code", code)
			continue
		}
		e.log.Info("subscribed", "filter", f, "broker", e.o.Conn.URL)
	}
}

// receive takes one delivery: a chain is checked and acknowledged at once;
// a record waits for the worker (a full queue holds the broker back).
func (e *Exporter) receive(ctx context.Context, m paho.Message) {
	if strings.HasPrefix(m.Topic(), "certs/") {
		if err := e.o.Checker.Chain(m.Topic(), m.Payload()); err != nil {
			e.log.Warn("certificate chain refused", "topic", m.Topic(), "error", err)
		}
		m.Ack()
		return
	}
	select {
	case e.in <- m:
	case <-ctx.Done(): // not acknowledged: delivered again
	}
}

// work exports records in batches of up to Config.Batch until ctx is done.
func (e *Exporter) work(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-e.ready:
	}
	for {
		var batch []paho.Message
		select {
		case <-ctx.Done():
			return
		case m := <-e.in:
			batch = append(batch, m)
		}
	more:
		for len(batch) < e.cfg.Batch {
			select {
			case m := <-e.in:
				batch = append(batch, m)
			default:
				break more
			}
		}
		if err := e.export(ctx, batch); err != nil {
			return // stopped: what is not acknowledged comes again
		}
	}
}
