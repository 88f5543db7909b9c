package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vitalgate/vitalgate/gateway/internal/anomaly"
	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/gateway/internal/certpub"
	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/gateway/internal/guard"
	"github.com/vitalgate/vitalgate/gateway/internal/ingest"
	"github.com/vitalgate/vitalgate/gateway/internal/jobs"
	"github.com/vitalgate/vitalgate/gateway/internal/posture"
	"github.com/vitalgate/vitalgate/gateway/internal/relay"
	"github.com/vitalgate/vitalgate/gateway/internal/spool"
	"github.com/vitalgate/vitalgate/internal/batchverify"
	"github.com/vitalgate/vitalgate/internal/cloud"
	"github.com/vitalgate/vitalgate/internal/mqttlog"
)

// The stages of [New], in order. Each opens or builds one part; on an error
// New closes what the stages before it opened.

// openQueue opens the durable queue (with the last seq per device) in the
// data directory, or resets one refused as corrupt or lost if so configured.
func (g *Gateway) openQueue() error {
	if err := prepareData(g.cfg.Data); err != nil {
		return err
	}
	delay := g.cfg.Queue.CommitDelay
	if delay == 0 {
		delay = -1 // configured off; the spool's zero is its default
	}
	commitTime := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "vitalgate_queue_commit_seconds", Help: "Time of one queue write transaction (page writes and two fdatasyncs).",
		Buckets: ingest.LatencyBuckets})
	g.reg.MustRegister(commitTime)
	reset, err := g.openOrResetQueue(spool.Options{
		MaxRecords: g.cfg.Queue.MaxRecords, MaxBytes: g.cfg.Queue.MaxBytes, CommitDelay: delay, MaxSeqJump: g.cfg.MaxSeqJump,
		OnCommit: func(_ int, took time.Duration) { commitTime.Observe(took.Seconds()) }})
	if err != nil {
		return err
	}
	g.queueReset = reset
	g.registerQueueMetrics()
	return nil
}

// openOrResetQueue opens the queue. One that is refused as corrupt or lost
// is moved aside and replaced by an empty one if the configuration says so
// (--reset-queue); reset then says what happened, for the security event.
// The spool's errors name the operation and the file; only what the
// gateway knows is added.
func (g *Gateway) openOrResetQueue(o spool.Options) (reset string, err error) {
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
		return "", err // "open queue PATH: ...", in use by another process say
	}
	why := err
	moved, err := spool.Reset(path)
	if err != nil {
		return "", fmt.Errorf("open queue: %v; %w", why, err)
	}
	if g.queue, err = spool.Open(path, o); err != nil {
		return "", fmt.Errorf("after --reset-queue: %w", err)
	}
	reset = fmt.Sprintf("queue reset by --reset-queue: %v", why)
	if moved != "" {
		reset += "; the old file is now " + moved
	}
	g.log.Warn("queue reset: started with an empty queue; every device's replay state is gone", "reason", reset)
	return reset, nil
}

// openAudit opens the audit log, the durable record of security events.
func (g *Gateway) openAudit() (err error) {
	if g.audit, err = audit.Open(filepath.Join(g.cfg.Data, AuditFile)); err != nil {
		return err // "open audit log PATH: ..."
	}
	g.registerAuditMetrics()
	return nil
}

// startCloud starts the embedded cloud broker, when no cloud is configured.
func (g *Gateway) startCloud() error {
	if g.cloud == nil {
		return nil
	}
	if err := g.cloud.Start(); err != nil {
		return fmt.Errorf("embedded cloud broker: %w", err)
	}
	return nil
}

// newRelay builds the relay from the queue to the configured brokers, or to
// the embedded one.
func (g *Gateway) newRelay() (err error) {
	urls := g.cfg.Cloud
	if g.cloud != nil {
		urls = []string{"ssl://" + g.cloud.GatewayAddr()}
	}
	g.relay, err = relay.New(relay.Config{
		URLs: urls, TLS: g.files.cloudTLS, ClientID: g.id, Site: g.site, GatewayID: g.id,
		Format: g.cfg.Format, Window: g.cfg.Relay.Window, Logger: g.log, Registerer: g.reg,
		Subscriptions: []relay.Subscription{{Filter: "jobs/" + g.site + "/+", Handle: g.jobs.Handle}},
	}, g.queue)
	return err // "relay: ..."
}

// newJobs builds the rollout engine, its state in the data directory. It
// sends commands through the devices' mochi server and relays status
// through the relay, both built after it.
func (g *Gateway) newJobs() (err error) {
	g.jobs, err = jobs.New(jobs.Options{Site: g.site, GatewayID: g.id, Dir: g.cfg.Data, Fetch: g.fetchFirmware,
		Send:   func(topic string, payload []byte) error { return g.mqtt.Publish(topic, payload, false, 1) },
		Retain: func(topic string, payload []byte) bool { return g.relay.Retain(topic, payload, nil) },
		Event:  func(e audit.Event) { g.event(e, false) },
		Log:    g.log.With("component", "jobs")})
	return err
}

// fetchFirmware gets a job's image from the firmware store.
func (g *Gateway) fetchFirmware(ctx context.Context, model, version string) (*jobs.Target, error) {
	if testFirmware != nil {
		return testFirmware(ctx, model, version)
	}
	if g.firmware != nil {
		return g.storeFirmware(ctx, model, version)
	}
	return nil, errors.New("no firmware store: updates are off on this gateway")
}

// testFirmware, when set (by tests in this package only), stands for the
// firmware store.
var testFirmware func(ctx context.Context, model, version string) (*jobs.Target, error)

// newCertPub builds the publisher of the devices' certificate chains
// (certs/{site}/{device}, retained), which remembers what the cloud
// acknowledged in the data directory.
func (g *Gateway) newCertPub() (err error) {
	g.certs, err = certpub.New(certpub.Options{Site: g.site, PKI: g.cfg.PKI, Relay: g.relay,
		File: filepath.Join(g.cfg.Data, certpub.File), Log: g.log.With("component", "certpub")})
	return err // "certpub: ..."
}

// recordQueueReset records a queue reset by --reset-queue as a security
// event: audit log, cloud and log (the relay queues it until connected).
func (g *Gateway) recordQueueReset() error {
	if g.queueReset != "" {
		g.event(audit.Event{V: 1, TS: time.Now().UnixMilli(), GW: g.id, Verdict: EventQueueReset, Detail: g.queueReset}, true)
	}
	return nil
}

// newIngest builds the devices' side: one mochi server and the ingest hook
// that verifies, guards and stores what devices publish.
func (g *Gateway) newIngest() error {
	g.maxConns = connCap(g.cfg.MaxConnections, g.log)
	g.metrics = ingest.NewMetrics(g.reg)
	g.tracker = posture.NewTracker(g.cfg.Audit.MaxDevices, nil)
	g.newAnomaly()
	if g.cfg.Ed25519Batch {
		g.batcher = batchverify.New(0, 0)
		g.registerBatchMetrics()
	}
	g.hook = ingest.NewHook(g.ingestOptions())
	// Every rejection is already a security event with its verdict: mochi's
	// own line for it is dropped.
	mochiLog := slog.New(mqttlog.Handler{Handler: g.log.With("component", "mqtt").Handler(), Drop: []string{"publish packet error"}})
	g.mqtt = mqtt.New(&mqtt.Options{
		Capabilities:             deviceCapabilities(g.cfg, g.maxConns),
		Logger:                   mochiLog,
		InlineClient:             true, // the rollout jobs' commands to devices
		ClientNetWriteBufferSize: 2048,
		ClientNetReadBufferSize:  2048,
	})
	if err := g.hook.Attach(g.mqtt); err != nil {
		return fmt.Errorf("ingest hook: %w", err)
	}
	return nil
}

// newAnomaly builds the behaviour baselines, if enabled: an observer of the
// ingest hook that reports anomalies as security events ([Gateway.Start]
// runs its windows).
func (g *Gateway) newAnomaly() {
	a := g.cfg.Anomaly
	if !a.Enabled {
		return
	}
	g.anomaly = anomaly.New(anomaly.Options{
		Window: a.Window, Warmup: a.Warmup, Factor: a.Factor, Deviations: a.Deviations, MaxDevices: a.MaxDevices,
		Floors:    anomaly.Floors{MessagesPerMinute: a.MessagesFloor, ReconnectsPerHour: a.ReconnectsFloor, RejectedShare: a.RejectedFloor},
		GatewayID: g.id, Registerer: g.reg, Log: g.log.With("component", "anomaly"),
		// One event per episode: never held back by the device's event
		// budget, which its own rejections may have spent.
		Emit: func(e audit.Event) { g.event(e, true) },
	})
}

func (g *Gateway) ingestOptions() ingest.Options {
	cfg := g.cfg
	observers := []ingest.Observer{g.tracker, g.certs, g.jobs, g.inventory}
	if g.anomaly != nil {
		observers = append(observers, g.anomaly)
	}
	return ingest.Options{
		Queue: g.queue, Batcher: g.batcher, Guard: guard.New(guard.Limits{
			MessagesPerSecond: cfg.Rate.Messages, MessageBurst: cfg.Rate.Burst,
			BytesPerSecond: cfg.Rate.Bytes, ByteBurst: cfg.Rate.ByteBurst,
			Violations: cfg.Quarantine.Violations, Window: cfg.Quarantine.Window, Cooloff: cfg.Quarantine.Cooloff,
		}),
		Schemas:      &g.schemas,
		Revoked:      g.files.revoked, // either CA's list
		Event:        g.event,
		Metrics:      g.metrics,
		Site:         g.site,
		GatewayID:    g.id,
		JSON:         cfg.Format == "json",
		MaxPayload:   cfg.MaxPayload,
		MaxAge:       cfg.MaxAge,
		ResendWindow: cfg.MaxInflight,
		Observers:    observers,
		BelowMin:     g.inventory.BelowMin,
		Status:       g.status,
		ClockTrusted: g.clock.Trusted,
		Log:          g.log.With("component", "ingest"),
		Now:          g.now,
	}
}

// newAuditor builds the posture audit of the PKI directory, the open
// connections and the tracked devices; Start runs it periodically.
func (g *Gateway) newAuditor() error {
	a := g.cfg.Audit
	g.auditor = posture.NewAuditor(posture.Options{
		PKI: g.cfg.PKI, Tracker: g.tracker, Connections: g.hook.Connections, Firmware: g.inventory.FirmwareCheck, GatewayID: g.id, Registerer: g.reg,
		Policy: posture.Policy{SilenceFactor: a.SilenceFactor, SilenceMin: a.SilenceMin, Window: a.Window, Takeovers: a.Takeovers},
		Event:  func(e audit.Event) { g.event(e, false) },
	})
	return nil
}

// deviceCapabilities are the MQTT limits the devices' mochi server grants.
func deviceCapabilities(cfg config.Config, maxConns int) *mqtt.Capabilities {
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
	return caps
}

// listenDevices binds the admission-controlled device listener (mutual
// TLS) and adds it to the mochi server.
func (g *Gateway) listenDevices() (err error) {
	if g.devices, err = ingest.Listen(g.cfg.Listen, ingest.ListenerConfig{
		TLS: g.files.deviceTLS, MaxConns: g.maxConns, AcceptRate: g.cfg.AcceptRate, HandshakeTimeout: g.cfg.HandshakeTimeout,
		OnHandshake: g.handshakeOutcome(g.metrics), OnRefused: func(remote string) {
			g.metrics.Handshakes.WithLabelValues("refused").Inc()
		},
	}); err != nil {
		return fmt.Errorf("device listener: %w", err) // "listen tcp ADDR: ..."
	}
	if err := g.mqtt.AddListener(g.devices.Mochi("devices", g.mqtt)); err != nil {
		return fmt.Errorf("device listener: %w", err)
	}
	return nil
}

// listenHTTP binds the operations address, if one is configured.
func (g *Gateway) listenHTTP() (err error) {
	if g.cfg.HTTP == "" {
		return nil
	}
	if g.httpLn, err = net.Listen("tcp", g.cfg.HTTP); err != nil {
		return fmt.Errorf("http listener: %w", err) // "listen tcp ADDR: ..."
	}
	g.http = &http.Server{Handler: g.routes(), ReadHeaderTimeout: 5 * time.Second}
	return nil
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

// embeddedCloud is the configuration of the cloud broker the gateway
// starts when none is configured.
func embeddedCloud(cfg config.Config) cloud.Config {
	cc := cloud.Default()
	cc.PKI, cc.Listen, cc.Apps, cc.WS, cc.HTTP = cfg.PKI, "127.0.0.1:0", cfg.Embedded.Apps, cfg.Embedded.WS, ""
	cc.Web = cfg.Embedded.Web
	cc.Data = filepath.Join(cfg.Data, CloudDir)
	if tuneEmbeddedCloud != nil {
		tuneEmbeddedCloud(&cc)
	}
	return cc
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
