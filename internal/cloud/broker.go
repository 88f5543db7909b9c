// Package cloud is the cloud-side MQTT broker (docs/design.md#the-shape), built on
// mochi-mqtt: gateways connect with mutual TLS and publish under their own
// site; clinicians' apps connect over TLS or WebSocket+TLS with a JWT as the
// MQTT password and may only subscribe to the sites of their token.
//
// # Use
//
// The `broker` program runs it; the gateway embeds it when no cloud is
// configured:
//
//	b, err := cloud.New(cfg, log) // cfg from cloud.Default(), checked by cfg.Validate()
//	err = b.Start()               // binds every listener, loads the store
//	defer b.Close()
//
// # Trust
//
// One mochi hook ([mqtt.HookBase] embedded, declaring Provides) authenticates
// every CONNECT and decides every publish, subscription and delivery; no
// other hook provides authentication, since mochi ORs them together.
//
// # Persistence
//
// With [Config.Data] set, sessions, subscriptions, in-flight QoS 1 messages
// and retained messages are kept in mochi's pebble store (not bolt, which
// loses in-flight packet IDs) and survive a restart. Per-session queues are
// bounded by [Config.MaxInflight] and [Config.SessionExpiry].
//
// The payload gateways publish is a [Message].
package cloud

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	pebbledb "github.com/cockroachdb/pebble"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage/pebble"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vitalgate/vitalgate/internal/fhirexport"
	"github.com/vitalgate/vitalgate/internal/listen"
	"github.com/vitalgate/vitalgate/internal/mqttlog"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/webview"
)

// Broker is the cloud broker. Create it with [New], run it with
// [Broker.Start], stop it with [Broker.Close].
type Broker struct {
	cfg   Config
	log   *slog.Logger
	m     *metrics
	srv   *mqtt.Server
	hook  *authHook
	rev   *revocations
	store *pebble.Hook // nil without Config.Data

	gwTLS, appTLS *tls.Config
	gw, apps      *listen.Listener
	ws            *wsListener
	httpLn        net.Listener
	httpSrv       *http.Server
	repo          *repoServer // nil without Config.Updates
	updatesLn     net.Listener
	updatesSrv    *http.Server
	// The FHIR exporter (Config.FHIR), its in-process listener and its
	// watcher; nil when off.
	exporter        *fhirexport.Exporter
	pipe            *pipeListener
	exporterWatcher *Watcher
	stopExporter    context.CancelFunc
	exporterWG      sync.WaitGroup
	web             *webview.Server // nil without Config.Web

	started   atomic.Bool
	ready     atomic.Bool
	done      chan struct{}
	wg        sync.WaitGroup
	startOnce sync.Once
	closeOnce sync.Once
	closeErr  error
}

// New checks cfg and loads the PKI material: broker.crt and broker.key (the
// TLS server identity), gateway-ca.crt (the only issuer of gateway client
// certificates), app-token.pub (the key that signs app tokens), and the
// revocation lists gateway-crl.pem (its signature must verify with
// gateway-ca.crt) and revoked-tokens (missing: none revoked). Nothing is
// bound until [Broker.Start].
func New(cfg Config, log *slog.Logger) (*Broker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cloud config: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	b := &Broker{cfg: cfg, log: log.With("component", "cloud"), done: make(chan struct{})}
	b.m = newMetrics(func() *mqtt.Server { return b.srv })

	// The server certificate is reloaded when its files change.
	appTLS, err := pki.ServerTLS(filepath.Join(cfg.PKI, pki.FileBroker), filepath.Join(cfg.PKI, pki.FileBrokerKey), nil, nil)
	if err != nil {
		return nil, fmt.Errorf("broker certificate: %w", err)
	}
	gwCAs, err := pki.LoadPool(filepath.Join(cfg.PKI, pki.FileGatewayCA))
	if err != nil {
		return nil, fmt.Errorf("gateway CA: %w", err)
	}
	key, err := pki.LoadTokenKey(filepath.Join(cfg.PKI, pki.FileAppTokenPub))
	if err != nil {
		return nil, fmt.Errorf("app token key: %w", err)
	}
	if b.rev, err = loadRevocations(cfg.PKI); err != nil {
		return nil, err
	}
	if err := b.newExporter(); err != nil {
		return nil, err
	}
	// Last: it starts refreshing the provider's keys, which Close stops.
	v, err := b.newOIDC()
	if err != nil {
		return nil, err // names its oidc key
	}
	b.hook = newAuthHook(b, key, gwCAs, v)

	b.appTLS = appTLS
	// The gateways' chain is checked by VerifyConnection (against
	// gateway-ca.crt only, client-auth usage), which also counts and logs
	// refusals; ClientCAs is sent as the list of acceptable issuers.
	base := appTLS.Clone()
	base.ClientAuth = tls.RequireAnyClientCert
	base.ClientCAs = gwCAs
	b.gwTLS = base.Clone()
	b.gwTLS.GetConfigForClient = func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		remote := ""
		if hi.Conn != nil {
			remote = hi.Conn.RemoteAddr().String()
		}
		c.VerifyConnection = func(cs tls.ConnectionState) error { return b.hook.verifyGatewayCert(cs, remote) }
		return c, nil
	}
	return b, nil
}

// Start opens the store, binds every listener and serves. Calling it twice,
// or after Close, is an error.
func (b *Broker) Start() error {
	err := errors.New("cloud broker already started")
	b.startOnce.Do(func() { err = b.start() })
	return err
}

func (b *Broker) start() error {
	select {
	case <-b.done:
		return errors.New("cloud broker closed")
	default:
	}
	b.srv = b.newServer()
	fail := func(err error) error {
		_ = b.srv.Close()
		if b.httpLn != nil {
			_ = b.httpLn.Close()
		}
		if b.updatesLn != nil {
			_ = b.updatesLn.Close()
		}
		if b.web != nil {
			_ = b.web.Close()
		}
		return err
	}
	if err := b.srv.AddHook(b.hook, nil); err != nil {
		return fail(fmt.Errorf("add auth hook: %w", err))
	}
	if err := b.openStore(); err != nil {
		return fail(err)
	}
	if err := b.bind(); err != nil {
		return fail(err)
	}
	if err := b.srv.Serve(); err != nil {
		return fail(fmt.Errorf("serve: %w", err))
	}
	b.started.Store(true)
	if b.httpLn != nil {
		b.serveHTTP()
	}
	b.serveUpdates()
	b.startExporter()
	b.goroutine(b.sweepLoop)
	b.goroutine(b.revocationLoop)
	b.ready.Store(true)
	b.log.Info("cloud broker started", "gateways", b.GatewayAddr(), "apps", b.AppsAddr(), "ws", b.WSAddr(),
		"http", b.HTTPAddr(), "updates", b.UpdatesAddr(), "web", b.WebAddr(), "data", b.cfg.Data)
	return nil
}

// newServer is the mochi server with the limits of the broker's config.
func (b *Broker) newServer() *mqtt.Server {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = uint32(b.cfg.MaxPacket)
	caps.MaximumInflight = uint16(b.cfg.MaxInflight)
	caps.MaximumClientWritesPending = int32(b.cfg.MaxWritesPending)
	caps.MaximumClients = int64(b.cfg.MaxClients)
	caps.MaximumSessionExpiryInterval = uint32(b.cfg.SessionExpiry / time.Second)
	caps.MaximumMessageExpiryInterval = int64(b.cfg.MessageExpiry / time.Second)
	caps.MaximumQos = 1
	return mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		Logger:                 slog.New(mqttlog.Handler{Handler: b.log.With("component", "mochi").Handler()}),
		SysTopicResendInterval: 60,
		// Deliveries queued for a client while one is written go out in
		// one write, up to this many bytes: an app subscribed to a site
		// gets its telemetry in bursts.
		ClientNetWriteBufferSize: 32 << 10,
	})
}

// openStore adds the pebble store in Config.Data to the server (nothing
// without Config.Data).
func (b *Broker) openStore() error {
	if b.cfg.Data == "" {
		return nil
	}
	if err := os.MkdirAll(b.cfg.Data, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	mode := pebble.NoSync
	if b.cfg.SyncWrites {
		mode = pebble.Sync
	}
	b.store = new(pebble.Hook)
	err := b.srv.AddHook(grantedStore{b.store}, &pebble.Options{
		Path:    filepath.Join(b.cfg.Data, "pebble"),
		Mode:    mode,
		Options: &pebbledb.Options{Logger: pebbleLogger{b.log}},
	})
	if err != nil {
		b.store = nil
		return fmt.Errorf("open store in %s: %w", b.cfg.Data, err)
	}
	return nil
}

// bind binds the configured listeners: the gateways' one, the apps' TLS
// and WebSocket ones, and the HTTP one.
func (b *Broker) bind() error {
	b.gw = listen.NewListener(b.srv, listenerGateways, b.cfg.Listen, b.gwTLS, b.cfg.ConnectTimeout).BatchWrites(gatewayWriteTimeout)
	if err := b.srv.AddListener(b.gw); err != nil {
		return fmt.Errorf("listen for gateways on %s: %w", b.cfg.Listen, err)
	}
	if b.cfg.Apps != "" {
		b.apps = listen.NewListener(b.srv, listenerApps, b.cfg.Apps, b.appTLS, b.cfg.ConnectTimeout).BatchWrites(b.cfg.AppWriteTimeout)
		if err := b.srv.AddListener(b.apps); err != nil {
			return fmt.Errorf("listen for apps on %s: %w", b.cfg.Apps, err)
		}
	}
	if b.cfg.WS != "" {
		b.ws = &wsListener{id: listenerWS, address: b.cfg.WS, tls: b.appTLS, deadline: b.cfg.ConnectTimeout, gate: listen.NewGate(b.srv),
			writeTimeout: b.cfg.AppWriteTimeout,
			maxMsg:       int64(2*b.cfg.MaxPacket + 4096)}
		if err := b.srv.AddListener(b.ws); err != nil {
			return fmt.Errorf("listen for apps (websocket) on %s: %w", b.cfg.WS, err)
		}
	}
	if b.pipe != nil {
		if err := b.srv.AddListener(b.pipe); err != nil {
			return fmt.Errorf("fhir exporter listener: %w", err)
		}
	}
	if b.cfg.HTTP != "" {
		ln, err := net.Listen("tcp", b.cfg.HTTP)
		if err != nil {
			return fmt.Errorf("listen for http on %s: %w", b.cfg.HTTP, err)
		}
		b.httpLn = ln
	}
	if err := b.bindUpdates(); err != nil {
		return err
	}
	return b.startWeb()
}

// startWeb starts the clinician web view (Config.Web) with the apps' TLS
// identity; its page connects to the WebSocket listener, bound before it.
func (b *Broker) startWeb() error {
	if b.cfg.Web == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(b.WSAddr())
	if err != nil {
		return fmt.Errorf("web view: websocket address %q: %w", b.WSAddr(), err)
	}
	wsPort, err := strconv.Atoi(port)
	if err != nil {
		return fmt.Errorf("web view: websocket port %q: %w", port, err)
	}
	ca, err := os.ReadFile(filepath.Join(b.cfg.PKI, pki.FileCA))
	if err != nil {
		return fmt.Errorf("web view: %w", err)
	}
	w, err := webview.New(webview.Options{Addr: b.cfg.Web, TLS: b.appTLS, WSPort: wsPort, CA: ca,
		Alerts: b.cfg.WebAlerts, Log: b.log.With("component", "webview"),
		// The page reads the outside provider's claims as the broker does;
		// the app-token key's tokens use the default names, its fallback.
		SitesClaim: b.cfg.OIDC.SitesClaim, RoleClaim: b.cfg.OIDC.RoleClaim})
	if err != nil {
		return err
	}
	if err := w.Start(); err != nil {
		return err
	}
	b.web = w
	return nil
}

// WebAddr is the bound address of the clinician web view ("" when off);
// browsers open https://WebAddr/.
func (b *Broker) WebAddr() string {
	if b.web != nil {
		return b.web.Addr()
	}
	return b.cfg.Web
}

// serveHTTP serves /metrics, /healthz and /readyz on the bound HTTP
// listener.
func (b *Broker) serveHTTP() {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(b.m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !b.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	b.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	b.goroutine(func() {
		if err := b.httpSrv.Serve(b.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			b.log.Error("http server failed", "error", err)
		}
	})
}

// sweepLoop runs the auth hook's sweep every 2 seconds until Close.
func (b *Broker) sweepLoop() {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-b.done:
			return
		case now := <-t.C:
			b.hook.sweep(now)
		}
	}
}

// goroutine runs f tied to the broker's WaitGroup.
func (b *Broker) goroutine(f func()) {
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		f()
	}()
}

// GatewayAddr is the bound address of the gateways' listener.
func (b *Broker) GatewayAddr() string {
	if b.gw != nil {
		return b.gw.Address()
	}
	return b.cfg.Listen
}

// AppsAddr is the bound address of the apps' TLS listener ("" when off).
func (b *Broker) AppsAddr() string {
	if b.apps != nil {
		return b.apps.Address()
	}
	return b.cfg.Apps
}

// WSAddr is the bound address of the apps' WebSocket+TLS listener ("" when
// off); apps connect to wss://WSAddr/.
func (b *Broker) WSAddr() string {
	if b.ws != nil {
		return b.ws.Address()
	}
	return b.cfg.WS
}

// HTTPAddr is the bound address of /metrics, /healthz, /readyz ("" when off).
func (b *Broker) HTTPAddr() string {
	if b.httpLn != nil {
		return b.httpLn.Addr().String()
	}
	return b.cfg.HTTP
}

// Ready reports whether the broker serves (false before Start and once Close
// began).
func (b *Broker) Ready() bool { return b.ready.Load() }

// shutdownTimeout bounds the wait for mochi's shutdown (a variable for tests).
var shutdownTimeout = 15 * time.Second

// Close stops the broker: /readyz turns unready, listeners stop accepting,
// clients are disconnected (gateways' wills are published), the store is
// flushed and closed, then the HTTP server stops. The wait for the clients'
// goroutines is bounded by 15 seconds: a client that does not end by then
// (one held by a hook or a dependency) is left behind with an error, so a
// SIGTERM always ends the broker. It is safe to call twice.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.ready.Store(false)
		b.startOnce.Do(func() {}) // a later Start fails
		close(b.done)
		b.closeExporter()
		if b.started.Load() {
			stopped := make(chan error, 1)
			go func() { stopped <- b.srv.Close() }() // listeners, clients, then hooks (store)
			select {
			case b.closeErr = <-stopped:
			case <-time.After(shutdownTimeout):
				b.closeErr = fmt.Errorf("cloud broker shutdown: clients still running after %s; stopping without them (the store may not be closed cleanly)", shutdownTimeout)
				b.log.Error("shutdown timed out", "error", b.closeErr, "clients", b.srv.Clients.Len())
			}
		}
		for _, s := range []*http.Server{b.httpSrv, b.updatesSrv} {
			if s != nil {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_ = s.Shutdown(ctx)
				cancel()
			}
		}
		if b.web != nil {
			_ = b.web.Close()
		}
		if b.repo != nil {
			_ = b.repo.root.Close()
		}
		if b.hook.oidc != nil {
			b.hook.oidc.Close()
		}
		b.wg.Wait()
		b.log.Info("cloud broker stopped")
	})
	return b.closeErr
}

// grantedStore is mochi's pebble store, keeping only the subscriptions that
// were granted. pebble's OnSubscribed stores every filter of a SUBSCRIBE,
// refused ones too (with the refusal code as QoS), and a restart would
// subscribe them: a session would queue what it was refused (until its next
// CONNECT prunes it) and an over-deep filter would be rebuilt at every start.
type grantedStore struct{ *pebble.Hook }

// OnSubscribed stores the granted filters of a SUBSCRIBE.
func (s grantedStore) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	var filters packets.Subscriptions
	var granted []byte
	for i, f := range pk.Filters {
		if i < len(codes) && codes[i] < packets.ErrUnspecifiedError.Code {
			filters = append(filters, f)
			granted = append(granted, codes[i])
		}
	}
	if len(filters) == 0 {
		return
	}
	pk.Filters = filters
	s.Hook.OnSubscribed(cl, pk, granted)
}

// pebbleLogger sends pebble's chatter to debug and its fatal errors to error.
type pebbleLogger struct{ log *slog.Logger }

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}

func (l pebbleLogger) Fatalf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...), "component", "pebble")
	os.Exit(1)
}
