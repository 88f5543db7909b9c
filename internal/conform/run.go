package conform

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/vitalgate/vitalgate/internal/listen"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"
)

// Options configure a conformance run.
type Options struct {
	PKI    string // the deployment's PKI directory: gateway.crt/.key serve TLS, device-ca.crt and issuing-ca.crt verify devices
	Listen string // host:port to listen on (default 127.0.0.1:8883)
	Device string // the device ID to judge; "" judges the first device that connects
	// Messages is how many valid messages are acknowledged after the
	// script (default 10); DisconnectAfter how many before it (default 5).
	Messages        int
	DisconnectAfter int
	Duration        time.Duration     // the run ends after this at the latest (default 5m)
	Now             func() time.Time  // the clock the time rule uses (default time.Now)
	Ready           func(addr string) // called with the listening address once it listens
	Log             func(string)      // progress lines; nil: none
}

func (o Options) logf(format string, args ...any) {
	if o.Log != nil {
		o.Log(fmt.Sprintf(format, args...))
	}
}

func (o *Options) defaults() {
	if o.Listen == "" {
		o.Listen = "127.0.0.1:8883"
	}
	if o.Messages <= 0 {
		o.Messages = 10
	}
	if o.DisconnectAfter <= 0 {
		o.DisconnectAfter = 5
	}
	if o.Duration <= 0 {
		o.Duration = 5 * time.Minute
	}
}

// Run listens, judges the device that connects, and reports every rule
// when the script is through and Messages more were acknowledged, or when
// Duration or ctx ends. It returns [ErrNoDevice] (with the report) when no
// device connected, and an error when it cannot listen.
func Run(ctx context.Context, o Options) (*Report, error) {
	o.defaults()
	p := func(n string) string { return filepath.Join(o.PKI, n) }
	pool, err := pki.LoadPool(p(pki.FileDeviceCA), p(pki.FileIssuingCA))
	if err != nil {
		return nil, fmt.Errorf("device CAs: %w", err)
	}
	tc, err := pki.ServerTLS(p(pki.FileGateway), p(pki.FileGatewayKey), nil, nil)
	if err != nil {
		return nil, fmt.Errorf("listener TLS: %w", err)
	}
	c := &checker{o: o, t: newTally(), schemas: telemetry.DefaultSchemas(), done: make(chan struct{})}
	// Every client certificate is looked at, so a refused one is reported.
	tc.ClientAuth, tc.VerifyPeerCertificate = tlsRequireAny, c.verifyPeer(pool)
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize, caps.MaximumQos, caps.RetainAvailable, caps.ReceiveMaximum = 72<<10, 1, 0, 64
	srv := mqtt.New(&mqtt.Options{Capabilities: caps, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := srv.AddHook(c, nil); err != nil {
		return nil, err
	}
	l := listen.NewListener(srv, "devices", o.Listen, tc, 10*time.Second)
	if err := srv.AddListener(l); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", o.Listen, err)
	}
	if err := srv.Serve(); err != nil {
		return nil, err
	}
	defer srv.Close()
	if o.Ready != nil {
		o.Ready(l.Address())
	}
	rep := &Report{Start: time.Now()}
	timer := time.NewTimer(o.Duration)
	defer timer.Stop()
	select {
	case <-c.done:
	case <-timer.C:
	case <-ctx.Done():
	}
	c.mu.Lock()
	c.ended = true
	rep.Device, rep.MQTT, rep.Messages = c.dev, c.version, c.messages
	if c.cert != nil {
		rep.Key = keyName(c.cert)
	}
	c.mu.Unlock()
	rep.End = time.Now()
	rep.Results = c.t.results(c.scripted())
	if rep.Device == "" {
		return rep, ErrNoDevice
	}
	return rep, nil
}
