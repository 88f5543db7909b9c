package bench

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	mqtt3 "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/internal/packetconn"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// RelayCommand is the hidden subcommand of devicesim that runs the bare mochi
// relay of the baseline phase ([RelayMain]); the harness starts it from its
// own executable, pinned like the gateway.
const RelayCommand = "bench-relay"

// defaultRelayWindow is the gateway's default relay.window: the QoS 1
// messages the relays of the baseline phases keep in flight to the cloud.
const defaultRelayWindow = 4096

// RelayMain runs the bare mochi relay until SIGINT or SIGTERM and returns
// the exit status. Devices connect over mutual TLS as at the gateway (its
// server certificate, the device CA) and publish QoS 1; each PUBLISH on
// devices/{id}/telemetry is forwarded QoS 1 to the cloud broker on
// telemetry/{site}/{id}/telemetry, as the gateway's client (its client
// certificate and ID, MQTT 3.1.1, the gateway relay's batched writes), at
// most --window unacknowledged; a full window holds the device's PUBACK
// back. Nothing else: no signature, schema, replay or rate check, no
// durable queue. It logs `msg="bench relay started" devices=ADDR` when it
// serves.
func RelayMain(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet(RelayCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	pkiDir := fs.String("pki", "", "PKI directory (gateway.crt, gateway-client.crt, device-ca.crt, ca.crt)")
	cloud := fs.String("cloud", "", "host:port of the cloud broker's gateway listener (mutual TLS)")
	window := fs.Int("window", defaultRelayWindow, "QoS 1 messages in flight to the cloud")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *pkiDir == "" || *cloud == "" || *window < 1 || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "usage: devicesim %s --pki DIR --cloud HOST:PORT [--window N]\n", RelayCommand)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runRelay(ctx, *pkiDir, *cloud, *window, log); err != nil {
		log.Error("bench relay failed", "err", err)
		return 1
	}
	return 0
}

// runRelay serves until ctx is done or the cloud connection is lost (an
// error).
func runRelay(ctx context.Context, pkiDir, cloud string, window int, log *slog.Logger) error {
	p := func(n string) string { return filepath.Join(pkiDir, n) }
	tc, err := pki.ClientTLS(p(pki.FileCA), p(pki.FileGatewayClient), p(pki.FileGatewayClientKey))
	if err != nil {
		return err
	}
	cert, err := pki.LoadCert(p(pki.FileGatewayClient))
	if err != nil {
		return err
	}
	site, id := pki.ParseSiteAndID(cert)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var lost atomic.Pointer[error]
	f, err := dialForwarder(ctx, cloud, tc, id, window, func(err error) {
		lost.Store(&err)
		cancel()
	})
	if err != nil {
		return err
	}
	b, err := StartBaseline(pkiDir, &forwardHook{f: f, prefix: "telemetry/" + site + "/"})
	if err != nil {
		f.close()
		return err
	}
	log.Info("bench relay started", "devices", b.DeviceAddr(), "client_id", id, "window", window)
	<-ctx.Done()
	cerr := b.Close()
	f.close()
	log.Info("bench relay stopped", "forwarded", f.acked.Load(), "failed", f.failed.Load())
	if e := lost.Load(); e != nil {
		return fmt.Errorf("cloud connection lost: %w", *e)
	}
	return cerr
}

// forwarder publishes to the cloud, QoS 1, with a bounded window of
// messages awaiting their PUBACK.
type forwarder struct {
	c      mqtt3.Client
	slots  chan struct{}    // one per message in flight
	tokens chan mqtt3.Token // in flight, in publish order
	stop   chan struct{}    // closed: publish no more
	quit   chan struct{}    // closed: settle ends
	done   chan struct{}    // settle ended
	acked  atomic.Uint64
	failed atomic.Uint64
}

// dialForwarder connects to addr as clientID over tc, as the gateway's relay
// does: MQTT 3.1.1, clean session, no automatic reconnect, batched writes.
// lost is called if the connection ends.
func dialForwarder(ctx context.Context, addr string, tc *tls.Config, clientID string, window int, lost func(error)) (*forwarder, error) {
	f := &forwarder{slots: make(chan struct{}, window), tokens: make(chan mqtt3.Token, window),
		stop: make(chan struct{}), quit: make(chan struct{}), done: make(chan struct{})}
	open := func(uri *url.URL, _ mqtt3.ClientOptions) (net.Conn, error) {
		return packetconn.DialBatching(ctx, &net.Dialer{Timeout: 10 * time.Second}, uri, tc, 30*time.Second)
	}
	o := mqtt3.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(clientID).SetProtocolVersion(4).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second).
		SetKeepAlive(60 * time.Second).SetWriteTimeout(30 * time.Second).SetOrderMatters(false).
		SetCustomOpenConnectionFn(open).
		SetConnectionLostHandler(func(_ mqtt3.Client, err error) { lost(err) })
	f.c = mqtt3.NewClient(o)
	if t := f.c.Connect(); !t.WaitTimeout(15*time.Second) || t.Error() != nil {
		f.c.Disconnect(0)
		return nil, fmt.Errorf("connect to the cloud at %s: %w", addr, errOr(t.Error(), "timeout"))
	}
	go f.settle()
	return f, nil
}

// settle waits for each token in order and frees its slot.
func (f *forwarder) settle() {
	defer close(f.done)
	for {
		select {
		case <-f.quit:
			return
		case tok := <-f.tokens:
			select {
			case <-tok.Done():
			case <-f.quit:
				return
			}
			if tok.Error() != nil {
				f.failed.Add(1)
			} else {
				f.acked.Add(1)
			}
			<-f.slots
		}
	}
}

// publish forwards one message; it waits for a free slot of the window.
func (f *forwarder) publish(topic string, payload []byte) {
	select {
	case f.slots <- struct{}{}:
		f.tokens <- f.c.Publish(topic, 1, false, payload) // room: a slot is one place in tokens
	case <-f.stop:
	}
}

// close stops forwarding, waits up to 10 s for the window to empty and
// disconnects.
func (f *forwarder) close() {
	close(f.stop)
	deadline := time.Now().Add(10 * time.Second)
	for len(f.slots) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	close(f.quit)
	<-f.done
	f.c.Disconnect(250)
}

// forwardHook hands every PUBLISH on devices/{id}/... to the forwarder as
// prefix + {id}/..., before mochi sends the PUBACK.
type forwardHook struct {
	mqtt.HookBase
	f      *forwarder
	prefix string
}

// ID names the hook.
func (h *forwardHook) ID() string { return "bench-forward" }

// Provides says the hook handles OnPublish.
func (h *forwardHook) Provides(b byte) bool { return b == mqtt.OnPublish }

// OnPublish forwards pk and lets mochi go on with it.
func (h *forwardHook) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if rest, ok := strings.CutPrefix(pk.TopicName, "devices/"); ok {
		h.f.publish(h.prefix+rest, pk.Payload)
	}
	return pk, nil
}
