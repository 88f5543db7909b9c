package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync/atomic"
	"time"

	mqtt3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/fxamacker/cbor/v2"

	"github.com/vitalgate/vitalgate/internal/packetconn"
)

// SubscriberConfig says where a [Subscriber] connects and what it reads.
type SubscriberConfig struct {
	URL      string      // ssl://host:port or tcp://host:port
	TLS      *tls.Config // for ssl://
	ClientID string
	Username string
	Password string // an app JWT at the cloud broker
	Filter   string // topic filter, subscribed QoS 1
	// Latency, when set, is asked the PUBLISH-to-delivery time of each
	// delivered cloud message by its ID (docs/apps.md#messages).
	Latency func(id string, now time.Time) (time.Duration, bool)
	// Samples bounds the latencies kept.
	Samples int
}

// Subscriber counts the messages delivered to one MQTT 3.1.1 client.
type Subscriber struct {
	cfg     SubscriberConfig
	c       mqtt3.Client
	count   atomic.Uint64
	measure atomic.Bool
	lat     *Latencies
}

// idOnly reads the "id" of a cloud message and skips the rest.
type idOnly struct {
	ID string `cbor:"id"`
}

// Subscribe connects and subscribes.
func Subscribe(cfg SubscriberConfig) (*Subscriber, error) {
	if cfg.Samples <= 0 {
		cfg.Samples = 1 << 20
	}
	s := &Subscriber{cfg: cfg, lat: NewLatencies(cfg.Samples)}
	// Its PUBACKs are batched like the relay's publishes: those written
	// while a write is in progress leave together.
	open := func(uri *url.URL, _ mqtt3.ClientOptions) (net.Conn, error) {
		return packetconn.DialBatching(context.Background(), &net.Dialer{Timeout: 10 * time.Second}, uri, cfg.TLS, 30*time.Second)
	}
	o := mqtt3.NewClientOptions().AddBroker(cfg.URL).SetClientID(cfg.ClientID).SetUsername(cfg.Username).
		SetPassword(cfg.Password).SetCustomOpenConnectionFn(open).SetAutoReconnect(false).SetCleanSession(true).
		SetConnectTimeout(10 * time.Second).SetKeepAlive(60 * time.Second)
	s.c = mqtt3.NewClient(o)
	if t := s.c.Connect(); !t.WaitTimeout(15*time.Second) || t.Error() != nil {
		return nil, fmt.Errorf("subscriber connect to %s: %w", cfg.URL, errOr(t.Error(), "timeout"))
	}
	t := s.c.Subscribe(cfg.Filter, 1, s.handle)
	if !t.WaitTimeout(15*time.Second) || t.Error() != nil {
		s.c.Disconnect(100)
		return nil, fmt.Errorf("subscribe %s: %w", cfg.Filter, errOr(t.Error(), "timeout"))
	}
	return s, nil
}

func errOr(err error, text string) error {
	if err != nil {
		return err
	}
	return errors.New(text)
}

func (s *Subscriber) handle(_ mqtt3.Client, m mqtt3.Message) {
	now := time.Now()
	s.count.Add(1)
	if s.cfg.Latency == nil || !s.measure.Load() {
		return
	}
	var id idOnly
	if err := cbor.Unmarshal(m.Payload(), &id); err != nil {
		return // not a cloud record: no latency to take
	}
	if d, ok := s.cfg.Latency(id.ID, now); ok {
		s.lat.Add(d)
	}
}

// Count is the number of messages delivered so far.
func (s *Subscriber) Count() uint64 { return s.count.Load() }

// Measure turns latency sampling on or off; on, it starts from no samples.
func (s *Subscriber) Measure(on bool) {
	if on {
		s.lat.Reset()
	}
	s.measure.Store(on)
}

// Latencies are the samples taken while measuring.
func (s *Subscriber) Latencies() *Latencies { return s.lat }

// Close disconnects.
func (s *Subscriber) Close() { s.c.Disconnect(100) }
