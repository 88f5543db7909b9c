// Package server assembles the gateway from its stages: the PKI material, the
// device listener and ingest hook on an embedded mochi server, the durable
// queue, the audit log, the relay to the cloud (or an embedded cloud broker
// when none is configured), and the HTTP endpoints for operations.
//
// [New] reads like the pipeline of docs/design.md#the-stages, top to bottom.
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/gateway/internal/guard"
	"github.com/vitalgate/vitalgate/gateway/internal/ingest"
	"github.com/vitalgate/vitalgate/gateway/internal/relay"
	"github.com/vitalgate/vitalgate/gateway/internal/spool"
	"github.com/vitalgate/vitalgate/internal/cloud"
	"github.com/vitalgate/vitalgate/internal/mqttlog"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"
)

// File names under the data directory.
const (
	QueueFile = "queue.db"
	AuditFile = "audit.log"
	CloudDir  = "cloud"
)

// tuneEmbeddedCloud, when set (by benchmarks in this package only), adjusts
// the embedded cloud broker's configuration before it starts.
var tuneEmbeddedCloud func(*cloud.Config)

// Gateway is a running gateway.
type Gateway struct {
	cfg  config.Config
	log  *slog.Logger
	reg  *prometheus.Registry
	site string
	id   string

	rev     *pki.Revocations
	schemas atomic.Pointer[telemetry.Schemas]
	queue   *spool.Queue
	audit   *audit.Log
	cloud   *cloud.Broker // embedded, when no cloud URL is configured
	relay   *relay.Relay
	hook    *ingest.Hook
	mqtt    *mqtt.Server
	devices *ingest.Listener
	http    *http.Server
	httpLn  net.Listener
	closing atomic.Bool

	ctx      context.Context
	cancel   context.CancelFunc
	relayWG  sync.WaitGroup
	wg       sync.WaitGroup
	once     sync.Once
	closeErr error

	events     *eventGate
	suppressed prometheus.Counter

	// Stamps (mtime, size) of crl.pem and the schema file, taken before
	// their first load: a change after it, even one made before the watcher
	// starts, is seen as a change.
	crlStamp, schemaStamp string
}

// New builds a gateway from a validated configuration. Nothing listens until
// [Gateway.Start].
func New(cfg config.Config, log *slog.Logger) (g *Gateway, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := pkiPresent(cfg.PKI); err != nil {
		return nil, err
	}
	g = &Gateway{cfg: cfg, log: log, reg: prometheus.NewRegistry(), events: newEventGate(),
		suppressed: prometheus.NewCounter(prometheus.CounterOpts{Name: "vitalgate_gateway_events_suppressed_total",
			Help: "Security events not written because their source exceeded its event rate (the rejections are still counted)."})}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	built := g // the error returns below set g to nil
	defer func() {
		if err != nil {
			built.Close() // what was opened before the failure
		}
	}()
	g.reg.MustRegister(g.suppressed, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	p := func(name string) string { return filepath.Join(cfg.PKI, name) }

	// Identity: the gateway's own client certificate names its site and ID.
	gwCert, err := pki.LoadCert(p(pki.FileGatewayClient))
	if err != nil {
		return nil, fmt.Errorf("gateway client certificate: %w", err)
	}
	g.site, g.id = pki.ParseSiteAndID(gwCert)
	if err := identityMismatch(cfg, g.site, g.id); err != nil {
		if len(cfg.Cloud) == 0 {
			return nil, err
		}
		log.Warn("configured identity differs from the gateway client certificate: a VitalGate cloud broker will refuse it", "error", err)
	}
	if cfg.Site != "" {
		g.site = cfg.Site
	}
	if cfg.ID != "" {
		g.id = cfg.ID
	}
	if g.site == "" || g.id == "" {
		return nil, fmt.Errorf("%s names no site (OU) or gateway ID (CN), and none is configured", p(pki.FileGatewayClient))
	}

	// Trust: devices chain to the device CA and are not on its CRL.
	deviceCA, err := pki.LoadCert(p(pki.FileDeviceCA))
	if err != nil {
		return nil, fmt.Errorf("device CA: %w", err)
	}
	g.crlStamp = stamp(p(pki.FileCRL))
	if g.rev, err = pki.NewRevocations(p(pki.FileCRL), deviceCA); err != nil {
		return nil, fmt.Errorf("revocation list: %w", err)
	}
	devicePool, err := pki.LoadPool(p(pki.FileDeviceCA))
	if err != nil {
		return nil, fmt.Errorf("device CA: %w", err)
	}
	deviceTLS, err := pki.ServerTLS(p(pki.FileGateway), p(pki.FileGatewayKey), devicePool, g.rev)
	if err != nil {
		return nil, fmt.Errorf("device listener TLS: %w", err)
	}
	if err := setCurves(deviceTLS, cfg.Curves); err != nil {
		return nil, err
	}

	// Schemas, swapped atomically on reload.
	g.schemaStamp = stamp(cfg.Schemas)
	if err := g.loadSchemas(); err != nil {
		return nil, err
	}

	// Durable state: the queue (with the last seq per device) and the audit log.
	if err := os.MkdirAll(cfg.Data, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	delay := cfg.Queue.CommitDelay
	if delay == 0 {
		delay = -1 // configured off; the spool's zero is its default
	}
	commitTime := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "vitalgate_queue_commit_seconds", Help: "Time of one queue write transaction (page writes and two fdatasyncs).",
		Buckets: ingest.LatencyBuckets})
	g.reg.MustRegister(commitTime)
	reset, err := g.openQueue(spool.Options{
		MaxRecords: cfg.Queue.MaxRecords, MaxBytes: cfg.Queue.MaxBytes, CommitDelay: delay, MaxSeqJump: cfg.MaxSeqJump,
		OnCommit: func(_ int, took time.Duration) { commitTime.Observe(took.Seconds()) }})
	if err != nil {
		return nil, err
	}
	if g.audit, err = audit.Open(filepath.Join(cfg.Data, AuditFile)); err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	g.registerQueueMetrics()
	g.registerAuditMetrics()

	// Cloud: the configured brokers, or an embedded one.
	urls := cfg.Cloud
	if len(urls) == 0 {
		if g.cloud, err = cloud.New(embeddedCloud(cfg), log); err != nil {
			return nil, fmt.Errorf("embedded cloud broker: %w", err)
		}
		if err := g.cloud.Start(); err != nil {
			return nil, fmt.Errorf("embedded cloud broker: %w", err)
		}
		urls = []string{"ssl://" + g.cloud.GatewayAddr()}
	}
	cloudTLS, err := pki.ClientTLS(p(pki.FileCA), p(pki.FileGatewayClient), p(pki.FileGatewayClientKey))
	if err != nil {
		return nil, fmt.Errorf("cloud client TLS: %w", err)
	}
	if g.relay, err = relay.New(relay.Config{
		URLs: urls, TLS: cloudTLS, ClientID: g.id, Site: g.site, GatewayID: g.id,
		Format: cfg.Format, Window: cfg.Relay.Window, Logger: log, Registerer: g.reg,
	}, g.queue); err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}

	if reset != "" {
		// Audit log, cloud and log: the relay queues it until connected.
		g.event(audit.Event{V: 1, TS: time.Now().UnixMilli(), GW: g.id, Verdict: EventQueueReset, Detail: reset}, true)
	}

	// Devices: one mochi server, one hook, one admission-controlled listener.
	metrics := ingest.NewMetrics(g.reg)
	g.hook = ingest.NewHook(ingest.Options{
		Queue: g.queue, Guard: guard.New(guard.Limits{
			MessagesPerSecond: cfg.Rate.Messages, MessageBurst: cfg.Rate.Burst,
			BytesPerSecond: cfg.Rate.Bytes, ByteBurst: cfg.Rate.ByteBurst,
			Violations: cfg.Quarantine.Violations, Window: cfg.Quarantine.Window, Cooloff: cfg.Quarantine.Cooloff,
		}),
		Schemas:      &g.schemas,
		Revoked:      func(c *x509.Certificate) bool { return g.rev.IsRevoked(c.SerialNumber) },
		Event:        g.event,
		Metrics:      metrics,
		Site:         g.site,
		GatewayID:    g.id,
		JSON:         cfg.Format == "json",
		MaxPayload:   cfg.MaxPayload,
		MaxAge:       cfg.MaxAge,
		ResendWindow: cfg.MaxInflight,
		Log:          log.With("component", "ingest"),
	})
	maxConns := connCap(cfg.MaxConnections, log)
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = uint32(cfg.MaxPacket)
	caps.MaximumClients = int64(maxConns)
	caps.MaximumClientWritesPending = 64 // a device receives nothing but acks and commands
	caps.ReceiveMaximum = uint16(cfg.MaxInflight)
	caps.MaximumInflight = uint16(cfg.MaxInflight)
	caps.MaximumSessionExpiryInterval = 3600
	caps.MaximumMessageExpiryInterval = 3600
	caps.MaximumQos = 1
	caps.RetainAvailable = 0
	caps.SharedSubAvailable = 0
	caps.TopicAliasMaximum = 16
	caps.Compatibilities.ObscureNotAuthorized = false
	// Every rejection is already a security event with its verdict: mochi's
	// own line for it is dropped.
	mochiLog := slog.New(mqttlog.Handler{Handler: log.With("component", "mqtt").Handler(), Drop: []string{"publish packet error"}})
	g.mqtt = mqtt.New(&mqtt.Options{
		Capabilities:             caps,
		Logger:                   mochiLog,
		ClientNetWriteBufferSize: 2048,
		ClientNetReadBufferSize:  2048,
	})
	if err := g.hook.Attach(g.mqtt); err != nil {
		return nil, fmt.Errorf("ingest hook: %w", err)
	}
	if g.devices, err = ingest.Listen(cfg.Listen, ingest.ListenerConfig{
		TLS: deviceTLS, MaxConns: maxConns, AcceptRate: cfg.AcceptRate, HandshakeTimeout: cfg.HandshakeTimeout,
		OnHandshake: g.handshakeOutcome(metrics), OnRefused: func(remote string) {
			metrics.Handshakes.WithLabelValues("refused").Inc()
		},
	}); err != nil {
		return nil, fmt.Errorf("device listener: %w", err)
	}
	if err := g.mqtt.AddListener(g.devices.Mochi("devices", g.mqtt)); err != nil {
		return nil, fmt.Errorf("device listener: %w", err)
	}

	// Operations.
	if cfg.HTTP != "" {
		if g.httpLn, err = net.Listen("tcp", cfg.HTTP); err != nil {
			return nil, fmt.Errorf("http listener: %w", err)
		}
		g.http = &http.Server{Handler: g.routes(), ReadHeaderTimeout: 5 * time.Second}
	}
	return g, nil
}

// connCap is max_connections, lowered with a warning to what the limit of
// open files allows (see [ingest.ConnCap]).
func connCap(configured int, log *slog.Logger) int {
	nofile, err := nofileLimit()
	if err != nil {
		log.Warn("cannot read the open-file limit; max_connections not checked against it", "error", err)
		return configured
	}
	limit, lowered := ingest.ConnCap(configured, nofile)
	if lowered {
		log.Warn("max_connections lowered to fit the open-file limit (raise the limit, e.g. LimitNOFILE= in systemd, or lower max_connections)",
			"max_connections", configured, "effective", limit, "nofile", nofile, "reserved", ingest.FDReserve)
	}
	return limit
}

// EventQueueReset is the security event of a start with --reset-queue that
// moved a corrupt or lost queue aside.
const EventQueueReset = "queue_reset"

// EventReplayReset is the security event of `gateway replay reset`, which
// forgets one device's last accepted seq.
const EventReplayReset = "replay_reset"

// openQueue opens the queue. One that is refused as corrupt or lost is moved
// aside and replaced by an empty one if the configuration says so
// (--reset-queue); reset then says what happened, for the security event.
func (g *Gateway) openQueue(o spool.Options) (reset string, err error) {
	path := filepath.Join(g.cfg.Data, QueueFile)
	g.queue, err = spool.Open(path, o)
	refused := errors.Is(err, spool.ErrCorrupt) || errors.Is(err, spool.ErrLost)
	switch {
	case err == nil:
		if g.cfg.ResetQueue {
			g.log.Warn("--reset-queue given, but the queue is sound: nothing reset", "queue", path)
		}
		return "", nil
	case refused && !g.cfg.ResetQueue:
		return "", fmt.Errorf("open queue: %w; to move it aside and start an empty queue (its undelivered records and every device's replay state are then lost), start once with --reset-queue", err)
	case !refused:
		return "", fmt.Errorf("open queue: %w", err)
	}
	why := err
	moved, err := spool.Reset(path)
	if err != nil {
		return "", fmt.Errorf("open queue: %v; %w", why, err)
	}
	if g.queue, err = spool.Open(path, o); err != nil {
		return "", fmt.Errorf("open queue after reset: %w", err)
	}
	reset = fmt.Sprintf("queue reset by --reset-queue: %v", why)
	if moved != "" {
		reset += "; the old file is now " + moved
	}
	g.log.Warn("queue reset: started with an empty queue; every device's replay state is gone", "reason", reset)
	return reset, nil
}

// identityMismatch says how the configured site and ID differ from those of
// the gateway client certificate (certSite, certID). The embedded broker,
// like the standalone one, binds a gateway to its certificate: a gateway
// configured otherwise would be refused at every reconnect while its queue
// grows.
func identityMismatch(cfg config.Config, certSite, certID string) error {
	var errs []error
	if cfg.Site != "" && certSite != "" && cfg.Site != certSite {
		errs = append(errs, fmt.Errorf("site %q differs from the certificate's OU %q", cfg.Site, certSite))
	}
	if cfg.ID != "" && certID != "" && cfg.ID != certID {
		errs = append(errs, fmt.Errorf("gateway ID %q differs from the certificate's CN %q", cfg.ID, certID))
	}
	return errors.Join(errs...)
}

// embeddedCloud is the configuration of the cloud broker the gateway
// starts when none is configured.
func embeddedCloud(cfg config.Config) cloud.Config {
	cc := cloud.Default()
	cc.PKI, cc.Listen, cc.Apps, cc.WS, cc.HTTP = cfg.PKI, "127.0.0.1:0", cfg.Embedded.Apps, cfg.Embedded.WS, ""
	cc.Data = filepath.Join(cfg.Data, CloudDir)
	if tuneEmbeddedCloud != nil {
		tuneEmbeddedCloud(&cc)
	}
	return cc
}

// pkiPresent checks that dir holds a PKI at all (its ca.crt), so that a
// mistyped --pki is one error that says what to do rather than a missing
// file per certificate.
func pkiPresent(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, pki.FileCA)); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no PKI in %s (no %s): create one with `certs init --dir %s --site SITE --gateway-id ID`, or point --pki at the deployment's",
			dir, pki.FileCA, dir)
	}
	return nil
}

// Check loads every file the configuration names (certificates, keys, the
// revocation list, schemas, and the embedded cloud broker's files when no
// cloud is configured) and checks the data directory, without opening
// the queue or binding a port, so it can run beside a live gateway.
func Check(cfg config.Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := pkiPresent(cfg.PKI); err != nil {
		return err
	}
	p := func(name string) string { return filepath.Join(cfg.PKI, name) }
	var errs []error
	add := func(what string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
	}
	gw, err := pki.LoadCert(p(pki.FileGatewayClient))
	add("gateway client certificate", err)
	if err == nil {
		site, id := pki.ParseSiteAndID(gw)
		if (site == "" && cfg.Site == "") || (id == "" && cfg.ID == "") {
			errs = append(errs, fmt.Errorf("%s names no site (OU) or gateway ID (CN), and none is configured", p(pki.FileGatewayClient)))
		}
		if len(cfg.Cloud) == 0 {
			add("embedded cloud broker", identityMismatch(cfg, site, id))
		}
	}
	_, err = pki.ClientTLS(p(pki.FileCA), p(pki.FileGatewayClient), p(pki.FileGatewayClientKey))
	add("cloud client TLS", err)
	ca, err := pki.LoadCert(p(pki.FileDeviceCA))
	add("device CA", err)
	if err == nil {
		_, err = pki.NewRevocations(p(pki.FileCRL), ca)
		add("revocation list", err)
	}
	_, err = tls.LoadX509KeyPair(p(pki.FileGateway), p(pki.FileGatewayKey))
	add("gateway server certificate", err)
	if cfg.Schemas != "" {
		_, err = telemetry.LoadSchemas(cfg.Schemas)
		add("schemas", err)
	}
	if len(cfg.Cloud) == 0 {
		// Loads the embedded broker's certificate, key, gateway CA and
		// token key, and checks its addresses, without binding them.
		_, err = cloud.New(embeddedCloud(cfg), slog.New(slog.DiscardHandler))
		add("embedded cloud broker", err)
	}
	if err := os.MkdirAll(cfg.Data, 0o700); err != nil {
		add("data directory", err)
	} else if f, err := os.CreateTemp(cfg.Data, ".check-*"); err != nil {
		add("data directory not writable", err)
	} else {
		f.Close()
		os.Remove(f.Name())
	}
	return errors.Join(errs...)
}

// Start serves devices, relays to the cloud and watches the revocation list.
func (g *Gateway) Start() error {
	if err := g.mqtt.Serve(); err != nil {
		return fmt.Errorf("serve devices: %w", err)
	}
	g.relayWG.Add(1)
	go func() {
		defer g.relayWG.Done()
		if err := g.relay.Run(g.ctx); err != nil && !errors.Is(err, context.Canceled) {
			g.log.Error("relay stopped", "error", err)
		}
	}()
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		g.watchFiles()
	}()
	if g.http != nil {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			if err := g.http.Serve(g.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				g.log.Error("http server", "error", err)
			}
		}()
	}
	g.log.Info("gateway started", "site", g.site, "id", g.id, "devices", g.DeviceAddr(), "http", g.HTTPAddr(),
		"cloud", g.cloudDesc())
	return nil
}

func (g *Gateway) cloudDesc() string {
	if g.cloud != nil {
		return "embedded " + g.cloud.GatewayAddr()
	}
	return fmt.Sprint(g.cfg.Cloud)
}

// Reload re-reads the revocation list and the schemas (SIGHUP), and closes
// the connections of devices revoked since they connected.
func (g *Gateway) Reload() error {
	var errs []error
	if err := g.rev.Reload(); err != nil {
		errs = append(errs, fmt.Errorf("reload revocation list: %w", err))
	} else if n := g.hook.DropRevoked(); n > 0 {
		g.log.Warn("revoked devices disconnected", "count", n)
	}
	if err := g.loadSchemas(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (g *Gateway) loadSchemas() error {
	s := telemetry.DefaultSchemas()
	if g.cfg.Schemas != "" {
		var err error
		if s, err = telemetry.LoadSchemas(g.cfg.Schemas); err != nil {
			return fmt.Errorf("schemas: %w", err)
		}
	}
	g.schemas.Store(s)
	return nil
}

// watchFiles reloads crl.pem and the schema file when they change; after a
// CRL reload it drops the sessions of devices revoked since they connected.
// It also logs the audit log's failures and recoveries.
func (g *Gateway) watchFiles() {
	crl := filepath.Join(g.cfg.PKI, pki.FileCRL)
	lastCRL, lastSchemas, lastSweep := g.crlStamp, g.schemaStamp, time.Now()
	auditFailing := false
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-t.C:
		}
		auditFailing = g.watchAudit(auditFailing)
		if time.Since(lastSweep) > time.Minute {
			lastSweep = time.Now()
			g.hook.DropRevoked() // certificates that expired while connected
		}
		if s := stamp(crl); s != lastCRL {
			lastCRL = s
			if err := g.rev.Reload(); err != nil {
				g.log.Error("reload revocation list", "error", err)
			} else {
				g.log.Info("revocation list reloaded")
				g.hook.DropRevoked()
			}
		}
		if g.cfg.Schemas == "" {
			continue
		}
		if s := stamp(g.cfg.Schemas); s != lastSchemas {
			lastSchemas = s
			if err := g.loadSchemas(); err != nil {
				g.log.Error("reload schemas (keeping the previous ones)", "error", err)
			} else {
				g.log.Info("schemas reloaded", "file", g.cfg.Schemas)
			}
		}
	}
}

func stamp(path string) string {
	if path == "" {
		return ""
	}
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	return fmt.Sprint(fi.ModTime().UnixNano(), fi.Size())
}

// event records a security event, if the source's event budget allows:
// audit log first (the durable record), then the cloud, then the log.
func (g *Gateway) event(e audit.Event, quarantine bool) {
	if !g.events.admit(&e, time.Now(), quarantine) {
		g.suppressed.Inc()
		return
	}
	if err := g.audit.Append(e); err != nil {
		g.log.Error("audit log append", "error", err)
	}
	if b, err := json.Marshal(e); err == nil {
		g.relay.PublishEvent(b)
	}
	g.log.Warn("security event", "verdict", e.Verdict, "dev", e.Dev, "detail", e.Detail, "remote", e.Remote)
}

func (g *Gateway) handshakeOutcome(m *ingest.Metrics) func(string, *tls.ConnectionState, error) {
	return func(remote string, st *tls.ConnectionState, err error) {
		if err == nil {
			m.Handshakes.WithLabelValues("ok").Inc()
			return
		}
		m.Handshakes.WithLabelValues("failed").Inc()
		if isNoise(err) {
			return // a port scan or a dropped TCP connection is not a security event
		}
		g.event(audit.Event{V: 1, TS: time.Now().UnixMilli(), GW: g.id, Verdict: "handshake_failed",
			Detail: err.Error(), Remote: remote}, false)
	}
}

func isNoise(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, net.ErrClosed) || (errors.As(err, &ne) && ne.Timeout()) || err.Error() == "EOF"
}

func (g *Gateway) registerQueueMetrics() {
	g.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "vitalgate_queue_depth", Help: "Records waiting for the cloud."},
			func() float64 { return float64(g.queue.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "vitalgate_queue_bytes", Help: "Bytes waiting for the cloud."},
			func() float64 { return float64(g.queue.Bytes()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "vitalgate_queue_commits_total", Help: "Write transactions of the queue (two fdatasyncs each)."},
			func() float64 { return float64(g.queue.Commits()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "vitalgate_queue_oldest_seconds", Help: "Age of the oldest queued record."},
			func() float64 { return g.queue.OldestAge().Seconds() }),
	)
}

func (g *Gateway) registerAuditMetrics() {
	g.reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "vitalgate_audit_write_errors_total", Help: "Failed writes and fsyncs of the audit log."},
			func() float64 { return float64(g.audit.WriteErrors()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "vitalgate_audit_events_lost_total", Help: "Security events lost to audit log write errors (each loss is recorded in the log as a gap)."},
			func() float64 { return float64(g.audit.Lost()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "vitalgate_audit_failing", Help: "1 while the audit log cannot be written: security events are not being recorded."},
			func() float64 {
				if g.audit.Err() != nil {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "vitalgate_queue_failing", Help: "1 while the queue fails to store messages (not full: failing, a full disk say); devices get overloaded."},
			func() float64 {
				if g.hook.StoreError() != nil {
					return 1
				}
				return 0
			}),
	)
}

// notReady lists why the gateway cannot take devices' messages now, or
// nothing if it can.
func (g *Gateway) notReady() []string {
	var why []string
	if g.closing.Load() {
		why = append(why, "shutting down")
	}
	if g.queue.Len() >= g.cfg.Queue.MaxRecords || g.queue.Bytes() >= g.cfg.Queue.MaxBytes {
		why = append(why, "queue: full")
	}
	if e := g.hook.StoreError(); e != nil {
		why = append(why, fmt.Sprintf("queue: %s (failing since %s)", rootCause(e.Err), e.Since.UTC().Format(time.RFC3339)))
	}
	if err := g.audit.Err(); err != nil {
		why = append(why, "audit: "+rootCause(err)+" (security events are not being recorded)")
	}
	return why
}

// rootCause is the innermost message of err ("no space left on device"),
// without the paths the wrappers add.
func rootCause(err error) string {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err.Error()
		}
		err = u
	}
}

// watchAudit logs when the audit log starts failing and when it writes
// again; failing is the state of the previous call.
func (g *Gateway) watchAudit(failing bool) bool {
	err := g.audit.Err()
	switch {
	case err != nil && !failing:
		g.log.Error("audit log cannot be written: security events are not being recorded (retrying every second)", "error", err)
	case err == nil && failing:
		g.log.Warn("audit log written again; the events lost meanwhile are recorded in it as a gap", "lost_total", g.audit.Lost())
	}
	return err != nil
}

func (g *Gateway) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		// Ready means devices' messages can be taken and audited:
		// store-and-forward does not need the cloud, but it needs a queue
		// that stores and an audit log that writes.
		why := g.notReady()
		full := g.queue.Len() >= g.cfg.Queue.MaxRecords || g.queue.Bytes() >= g.cfg.Queue.MaxBytes
		state := map[string]any{"ready": len(why) == 0, "reasons": append([]string{}, why...),
			"queue": g.queue.Len(), "queue_full": full, "cloud_connected": g.relay.Connected()}
		w.Header().Set("Content-Type", "application/json")
		if len(why) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		json.NewEncoder(w).Encode(state)
	})
	if g.cfg.Pprof {
		// Profiles reveal the process's internals (no secrets: handlers are
		// not given request data); the http address should stay on loopback.
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// DeviceAddr is the bound device listener address.
func (g *Gateway) DeviceAddr() string { return g.devices.Addr().String() }

// HTTPAddr is the bound operations address, or "".
func (g *Gateway) HTTPAddr() string {
	if g.httpLn == nil {
		return ""
	}
	return g.httpLn.Addr().String()
}

// Cloud is the embedded cloud broker, or nil when the gateway relays to
// configured brokers.
func (g *Gateway) Cloud() *cloud.Broker { return g.cloud }

// Site and ID are the gateway's identity.
func (g *Gateway) Site() string { return g.site }

// ID is the gateway ID (CN of its client certificate unless configured).
func (g *Gateway) ID() string { return g.id }

// Registry holds the gateway's metrics.
func (g *Gateway) Registry() *prometheus.Registry { return g.reg }

// Queue is the store-and-forward queue (for tests and the demo's view).
func (g *Gateway) Queue() *spool.Queue { return g.queue }

// Close shuts down in order: stop accepting devices and disconnect them
// (soft), let the relay deliver what is in flight (drain), then close the
// queue, the audit log and the embedded cloud (hard). Safe to call twice.
func (g *Gateway) Close() error {
	g.once.Do(func() {
		g.closing.Store(true) // /readyz says so while devices drain
		var errs []error
		if g.devices != nil {
			errs = append(errs, g.devices.Close()) // no new devices
		}
		if g.hook != nil {
			g.hook.Drain(2 * time.Second) // what is being stored gets its PUBACK; nothing new is taken
		}
		if g.mqtt != nil {
			errs = append(errs, g.mqtt.Close())
		}
		g.cancel() // the relay waits for in-flight PUBACKs before it returns
		g.relayWG.Wait()
		if g.http != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			errs = append(errs, g.http.Shutdown(ctx))
			cancel()
		}
		if g.httpLn != nil {
			_ = g.httpLn.Close() // not served if Start never ran
		}
		g.wg.Wait()
		if g.audit != nil {
			errs = append(errs, g.audit.Close())
		}
		if g.queue != nil {
			errs = append(errs, g.queue.Close())
		}
		if g.cloud != nil {
			errs = append(errs, g.cloud.Close())
		}
		g.closeErr = errors.Join(errs...)
	})
	return g.closeErr
}

// setCurves applies a configured key-exchange preference; empty keeps Go's
// default, which puts the hybrid post-quantum X25519MLKEM768 first.
func setCurves(c *tls.Config, names []string) error {
	ids := map[string]tls.CurveID{"X25519MLKEM768": tls.X25519MLKEM768, "X25519": tls.X25519,
		"P256": tls.CurveP256, "P384": tls.CurveP384, "P521": tls.CurveP521}
	for _, n := range names {
		id, ok := ids[n]
		if !ok {
			return fmt.Errorf("curves: unknown %q", n)
		}
		c.CurvePreferences = append(c.CurvePreferences, id)
	}
	return nil
}
