package bench

import (
	"fmt"
	"io"
	"log/slog"
	"path/filepath"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// Baseline is a bare mochi broker: devices connect with the same mutual TLS
// as at the gateway, but nothing else is checked (no signature, record,
// replay, rate or schema check, no durable queue, no second hop). A
// subscriber on a plain loopback listener receives what they publish. It is
// the reference for the cost of security.
type Baseline struct {
	srv     *mqtt.Server
	devices *listeners.TCP
	subs    *listeners.TCP
}

// StartBaseline serves devices on a TLS listener with the gateway's server
// certificate and the device CA, and subscribers on a plain one, both on
// loopback ports of their own.
func StartBaseline(pkiDir string) (*Baseline, error) {
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
	b.devices = listeners.NewTCP(listeners.Config{ID: "devices", Address: "127.0.0.1:0", TLSConfig: tc})
	b.subs = listeners.NewTCP(listeners.Config{ID: "subscribers", Address: "127.0.0.1:0"})
	for _, l := range []*listeners.TCP{b.devices, b.subs} {
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
