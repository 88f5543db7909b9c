package bench

import (
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"

	"github.com/vitalgate/vitalgate/internal/listen"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// Baseline is a bare mochi broker: devices connect with the same mutual TLS
// as at the gateway, but nothing else is checked (no signature, record,
// replay, rate or schema check, no durable queue). A subscriber on a plain
// loopback listener receives what they publish; the bare relay of the
// baseline phase ([RelayMain]) adds a hook that forwards it to the cloud.
type Baseline struct {
	srv     *mqtt.Server
	devices *listen.Listener
	subs    *listen.Listener
}

// connectDeadline bounds a connection's TLS handshake and CONNECT.
const connectDeadline = 30 * time.Second

// StartBaseline serves devices on a TLS listener with the gateway's server
// certificate and the device CA, and subscribers on a plain one, both on
// loopback ports of their own. hooks are added after mochi's allow-all one.
func StartBaseline(pkiDir string, hooks ...mqtt.Hook) (*Baseline, error) {
	p := func(n string) string { return filepath.Join(pkiDir, n) }
	pool, err := pki.LoadPool(p(pki.FileDeviceCA))
	if err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}
	tc, err := pki.ServerTLS(p(pki.FileGateway), p(pki.FileGatewayKey), pool, nil)
	if err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = 72 << 10
	// mochi drops deliveries to a subscriber this far behind: room for all.
	caps.MaximumClientWritesPending = 1 << 16
	b := &Baseline{srv: mqtt.New(&mqtt.Options{Capabilities: caps, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})}
	if err := b.srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}
	for _, h := range hooks {
		if err := b.srv.AddHook(h, nil); err != nil {
			return nil, fmt.Errorf("baseline hook: %w", err)
		}
	}
	// Our listener, not mochi's TCP one: mochi's can deadlock in Close
	// (see package listen).
	b.devices = listen.NewListener(b.srv, "devices", "127.0.0.1:0", tc, connectDeadline)
	b.subs = listen.NewListener(b.srv, "subscribers", "127.0.0.1:0", nil, connectDeadline)
	for _, l := range []*listen.Listener{b.devices, b.subs} {
		if err := b.srv.AddListener(l); err != nil {
			b.srv.Close()
			return nil, fmt.Errorf("baseline listener: %w", err)
		}
	}
	if err := b.srv.Serve(); err != nil {
		b.srv.Close()
		return nil, fmt.Errorf("baseline: %w", err)
	}
	return b, nil
}

// DeviceAddr is the TLS listener of devices.
func (b *Baseline) DeviceAddr() string { return b.devices.Address() }

// SubscriberURL is the plain listener of subscribers.
func (b *Baseline) SubscriberURL() string { return "tcp://" + b.subs.Address() }

// Close stops the broker.
func (b *Baseline) Close() error { return b.srv.Close() }
