package relay

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults applied by [New] to zero fields of [Config].
const (
	DefaultWindow         = 4096
	DefaultEventBuffer    = 4096
	DefaultRetainBuffer   = 16384
	DefaultConnectTimeout = 10 * time.Second
	DefaultKeepAlive      = 15 * time.Second
	DefaultWriteTimeout   = 10 * time.Second
	DefaultBackoffMin     = 100 * time.Millisecond
	DefaultBackoffMax     = 10 * time.Second
	DefaultDrainTimeout   = 2 * time.Second
)

// Config configures a [Relay]. Only URLs, Site and GatewayID are required.
type Config struct {
	// URLs are the cloud brokers, tried in order on every (re)connection:
	// tcp:// or mqtt:// for plain TCP, ssl://, tls:// or mqtts:// for TLS.
	URLs []string
	// TLS is the client configuration for TLS URLs (root CAs and the gateway
	// client certificate). Nil means system roots and no client certificate.
	// MinVersion is raised to TLS 1.2 if lower.
	TLS *tls.Config
	// ClientID is the MQTT client id; default "vitalgate-{site}-{gw}".
	ClientID string
	// Site and GatewayID name the topics security/{site}/{gw} and gateways/{site}/{gw}/status.
	Site, GatewayID string
	// Format is the payload encoding the gateway chose ("cbor" or "json"; default
	// "cbor"). The relay publishes payloads unchanged; the field is checked and logged.
	Format string
	// Window is the number of QoS 1 telemetry publishes awaiting a PUBACK; default 4096.
	Window int
	// EventBuffer bounds the security events waiting to be published; default 4096.
	EventBuffer int
	// RetainBuffer bounds the topics whose retained message waits for the
	// cloud (see [Relay.Retain]); default 16384.
	RetainBuffer int
	// ConnectTimeout bounds the dial, TLS handshake and CONNACK; default 10 s.
	ConnectTimeout time.Duration
	// KeepAlive is the MQTT keepalive; default 15 s.
	KeepAlive time.Duration
	// WriteTimeout bounds a write to the cloud that makes no progress (paho's
	// hand-off of a packet to its writer, and each 32 KiB of a batched write);
	// default 10 s.
	WriteTimeout time.Duration
	// BackoffMin and BackoffMax bound the jittered reconnect delay; default 100 ms and 10 s.
	BackoffMin, BackoffMax time.Duration
	// DrainTimeout is how long Run waits for in-flight PUBACKs at shutdown; default 2 s.
	DrainTimeout time.Duration
	// Logger receives connection events; default slog.Default().
	Logger *slog.Logger
	// Registerer receives the relay's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Subscriptions are the cloud's messages the gateway takes (its site's
	// rollout jobs): subscribed with QoS 1 on every connection, before the
	// relay publishes anything else, so retained messages arrive at each
	// connect.
	Subscriptions []Subscription
}

// MaxSubscribedPayload bounds a message taken from a subscription: larger
// ones are dropped (logged) before the handler sees them.
const MaxSubscribedPayload = 64 << 10

// Subscription is one filter the relay subscribes to on every connection.
type Subscription struct {
	Filter string
	// Handle receives each message (topic, payload of at most
	// [MaxSubscribedPayload] bytes, retained flag) on paho's goroutine:
	// it must not block for long. A connection's retained messages arrive
	// again at each reconnect.
	Handle func(topic string, payload []byte, retained bool)
}

// withDefaults returns a copy of c with zero fields set to their defaults.
func (c Config) withDefaults() Config {
	if c.ClientID == "" {
		c.ClientID = "vitalgate-" + c.Site + "-" + c.GatewayID
	}
	if c.Format == "" {
		c.Format = "cbor"
	}
	setDefault(&c.Window, DefaultWindow)
	setDefault(&c.EventBuffer, DefaultEventBuffer)
	setDefault(&c.RetainBuffer, DefaultRetainBuffer)
	setDefault(&c.ConnectTimeout, DefaultConnectTimeout)
	setDefault(&c.KeepAlive, DefaultKeepAlive)
	setDefault(&c.WriteTimeout, DefaultWriteTimeout)
	setDefault(&c.BackoffMin, DefaultBackoffMin)
	setDefault(&c.BackoffMax, DefaultBackoffMax)
	setDefault(&c.DrainTimeout, DefaultDrainTimeout)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.TLS == nil {
		c.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	} else if c.TLS.MinVersion < tls.VersionTLS12 {
		c.TLS = c.TLS.Clone()
		c.TLS.MinVersion = tls.VersionTLS12
	}
	return c
}

func setDefault[T int | time.Duration](p *T, d T) {
	if *p == 0 {
		*p = d
	}
}

// Validate reports every problem of c at once, each naming its field.
// Zero fields that have defaults are valid.
func (c Config) Validate() error {
	var errs []error
	if len(c.URLs) == 0 {
		errs = append(errs, errors.New("relay: URLs: at least one broker URL is required"))
	}
	for i, u := range c.URLs {
		if _, err := normaliseURL(u); err != nil {
			errs = append(errs, fmt.Errorf("relay: URLs[%d]: %w", i, err))
		}
	}
	if !validLevel(c.Site) {
		errs = append(errs, fmt.Errorf("relay: Site: %q is not a valid topic level", c.Site))
	}
	if !validLevel(c.GatewayID) {
		errs = append(errs, fmt.Errorf("relay: GatewayID: %q is not a valid topic level", c.GatewayID))
	}
	if c.Format != "" && c.Format != "cbor" && c.Format != "json" {
		errs = append(errs, fmt.Errorf("relay: Format: %q is neither cbor nor json", c.Format))
	}
	if c.Window < 0 || c.Window > 65000 {
		errs = append(errs, fmt.Errorf("relay: Window: %d is outside 1..65000", c.Window))
	}
	if c.EventBuffer < 0 {
		errs = append(errs, fmt.Errorf("relay: EventBuffer: %d is negative", c.EventBuffer))
	}
	if c.RetainBuffer < 0 {
		errs = append(errs, fmt.Errorf("relay: RetainBuffer: %d is negative", c.RetainBuffer))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"ConnectTimeout", c.ConnectTimeout}, {"KeepAlive", c.KeepAlive}, {"WriteTimeout", c.WriteTimeout},
		{"BackoffMin", c.BackoffMin}, {"BackoffMax", c.BackoffMax}, {"DrainTimeout", c.DrainTimeout},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("relay: %s: %v is negative", d.name, d.v))
		}
	}
	for i, sub := range c.Subscriptions {
		if sub.Filter == "" || sub.Handle == nil {
			errs = append(errs, fmt.Errorf("relay: Subscriptions[%d]: a filter and a handler are required", i))
		}
	}
	if c.BackoffMin > 0 && c.BackoffMax > 0 && c.BackoffMax < c.BackoffMin {
		errs = append(errs, fmt.Errorf("relay: BackoffMax: %v is below BackoffMin %v", c.BackoffMax, c.BackoffMin))
	}
	return errors.Join(errs...)
}

// validLevel reports whether s can be one level of a topic name.
func validLevel(s string) bool {
	return s != "" && !strings.ContainsAny(s, "/+#\x00")
}

// normaliseURL checks a broker URL and rewrites its scheme to one paho dials:
// mqtt:// becomes tcp://, mqtts:// and tls:// become ssl://.
func normaliseURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("parse %q: %w", raw, err)
	}
	switch strings.ToLower(u.Scheme) {
	case "tcp", "mqtt":
		u.Scheme = "tcp"
	case "ssl", "tls", "mqtts":
		u.Scheme = "ssl"
	default:
		return "", fmt.Errorf("%q: scheme %q is not tcp, mqtt, ssl, tls or mqtts", raw, u.Scheme)
	}
	if u.Host == "" || u.Port() == "" {
		return "", fmt.Errorf("%q: host:port is required", raw)
	}
	return u.String(), nil
}
