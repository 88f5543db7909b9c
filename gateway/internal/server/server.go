// Package server assembles the gateway from its stages: the PKI material, the
// device listener and ingest hook on an embedded mochi server, the durable
// queue, the audit log, the relay to the cloud (or an embedded cloud broker
// when none is configured), and the HTTP endpoints for operations.
//
// [New] reads like the pipeline of docs/design.md#the-stages, top to bottom:
// it loads the files the configuration names (files.go, shared with
// [Check]), then runs the stages of assemble.go in order.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/vitalgate/vitalgate/gateway/internal/anomaly"
	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/gateway/internal/certpub"
	"github.com/vitalgate/vitalgate/gateway/internal/clocktrust"
	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/gateway/internal/firmware"
	"github.com/vitalgate/vitalgate/gateway/internal/ingest"
	"github.com/vitalgate/vitalgate/gateway/internal/inventory"
	"github.com/vitalgate/vitalgate/gateway/internal/jobs"
	"github.com/vitalgate/vitalgate/gateway/internal/posture"
	"github.com/vitalgate/vitalgate/gateway/internal/relay"
	"github.com/vitalgate/vitalgate/gateway/internal/spool"
	"github.com/vitalgate/vitalgate/internal/batchverify"
	"github.com/vitalgate/vitalgate/internal/cloud"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/version"
)

// File names under the data directory.
const (
	QueueFile = "queue.db"
	AuditFile = "audit.log"
	CloudDir  = "cloud"
)

// EventQueueReset is the security event of a start with --reset-queue that
// moved a corrupt or lost queue aside.
const EventQueueReset = "queue_reset"

// EventReplayReset is the security event of `gateway replay reset`, which
// forgets one device's last accepted seq.
const EventReplayReset = "replay_reset"

// tuneEmbeddedCloud, when set (by benchmarks in this package only), adjusts
// the embedded cloud broker's configuration before it starts.
var tuneEmbeddedCloud func(*cloud.Config)

// Gateway is a running gateway.
type Gateway struct {
	cfg   config.Config
	log   *slog.Logger
	reg   *prometheus.Registry
	files *files // what the configuration's files hold
	site  string
	id    string

	rev       *pki.Revocations
	schemas   atomic.Pointer[telemetry.Schemas]
	queue     *spool.Queue
	audit     *audit.Log
	cloud     *cloud.Broker // embedded, when no cloud URL is configured
	relay     *relay.Relay
	certs     *certpub.Publisher
	metrics   *ingest.Metrics
	hook      *ingest.Hook
	batcher   *batchverify.Batcher // EdDSA signatures of all devices in batches; nil: ed25519_batch off
	tracker   *posture.Tracker     // devices' connects and traffic, for the posture audit
	auditor   *posture.Auditor
	anomaly   *anomaly.Detector // nil when disabled
	inventory *inventory.Inventory
	clock     *clocktrust.Clock // whether the clock can judge records' time
	now       func() time.Time  // the gateway's clock (injected by tests)
	jobs      *jobs.Engine      // rollout jobs from the cloud
	mqtt      *mqtt.Server
	maxConns  int
	devices   *ingest.Listener
	http      *http.Server
	httpLn    net.Listener
	https     *http.Server // enrolment over EST
	httpsLn   net.Listener
	closing   atomic.Bool
	firmware  *firmware.Store // nil when updates.url is empty
	// allowFirmware says whether a job sends a device an image (GET /firmware/); nil: none does.
	allowFirmware func(deviceID, sha256hex string) bool

	// queueReset says why --reset-queue replaced the queue at this start,
	// for the security event; "" when it did not.
	queueReset string

	ctx      context.Context
	cancel   context.CancelFunc
	relayWG  sync.WaitGroup
	wg       sync.WaitGroup
	once     sync.Once
	closeErr error

	events      *eventGate
	suppressed  prometheus.Counter
	statusSinks statusSinks // receivers of devices' status records
}

// New builds a gateway from a validated configuration, stage by stage.
// Nothing listens for devices until [Gateway.Start]. On an error, what the
// stages before it opened is closed again.
func New(cfg config.Config, log *slog.Logger) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	f, err := loadFiles(cfg, log) // identity, device trust, TLS, schemas, embedded cloud
	if err != nil {
		return nil, err
	}
	g := newGateway(cfg, log, f)
	for _, stage := range []func() error{
		g.openQueue,        // durable state: the queue (and the last seq per device)...
		g.openAudit,        // ...and the audit log
		g.startCloud,       // the embedded cloud broker, if no cloud is configured
		g.newJobs,          // rollout jobs, taken from the relay's subscription
		g.newRelay,         // queue to cloud
		g.newCertPub,       // devices' certificate chains to the cloud, through the relay
		g.newInventory,     // devices' models, firmware and verdicts, to the cloud through the relay
		g.recordQueueReset, // a reset's security event, now that it can be recorded
		g.newClock,         // whether the clock can judge records' time (an event if not)
		g.newIngest,        // devices: mochi server and ingest hook...
		g.newAuditor,       // ...watched by the posture audit
		g.listenDevices,    // ...behind the admission-controlled mTLS listener
		g.listenHTTP,       // operations
		g.newFirmware,      // the update repository's client and the image cache
		g.wireRollouts,     // jobs: images from the store, downloads allowed, devices' status
		g.listenEnroll,     // enrolment over EST, and the firmware route
	} {
		if err := stage(); err != nil {
			g.Close()
			return nil, err
		}
	}
	return g, nil
}

// newGateway is a gateway with the loaded files, its identity and metrics
// registry, and nothing opened yet.
func newGateway(cfg config.Config, log *slog.Logger, f *files) *Gateway {
	g := &Gateway{cfg: cfg, log: log, reg: prometheus.NewRegistry(), files: f, site: f.site, id: f.id,
		rev: f.rev, cloud: f.cloud, events: newEventGate(),
		suppressed: prometheus.NewCounter(prometheus.CounterOpts{Name: "vitalgate_gateway_events_suppressed_total",
			Help: "Security events not written because their source exceeded its event rate (the rejections are still counted)."})}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.schemas.Store(f.schemas)
	g.reg.MustRegister(g.suppressed, version.Collector(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if f.mismatch != nil {
		log.Warn("configured identity differs from the gateway client certificate: a VitalGate cloud broker will refuse it", "error", f.mismatch)
	}
	return g
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
	g.wg.Add(2)
	go func() {
		defer g.wg.Done()
		g.watchFiles()
	}()
	go func() {
		defer g.wg.Done()
		g.auditLoop()
	}()
	g.wg.Go(func() { g.certs.Run(g.ctx) })
	g.wg.Go(func() { g.inventory.Run(g.ctx) })
	if g.anomaly != nil {
		g.wg.Go(func() { g.anomaly.Run(g.ctx) })
	}
	g.wg.Go(func() { g.jobs.Run(g.ctx) })
	g.wg.Go(func() { g.clock.Run(g.ctx, clockInterval) })
	if g.http != nil {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			if err := g.http.Serve(g.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				g.log.Error("http server", "error", err)
			}
		}()
	}
	if g.firmware != nil {
		g.wg.Go(func() { g.firmware.Run(g.ctx) })
	}
	g.serveEnroll()
	g.log.Info("gateway started", "site", g.site, "id", g.id, "devices", g.DeviceAddr(), "http", g.HTTPAddr(),
		"https", g.HTTPSAddr(), "cloud", g.cloudDesc())
	return nil
}

func (g *Gateway) cloudDesc() string {
	if g.cloud != nil {
		return "embedded " + g.cloud.GatewayAddr()
	}
	return fmt.Sprint(g.cfg.Cloud)
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

// Jobs is the rollout engine: the firmware route asks its Allowed, the
// devices' status reports go to its Report.
func (g *Gateway) Jobs() *jobs.Engine { return g.jobs }

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
		errs = append(errs, g.closeEnroll()) // no new enrolments
		if g.hook != nil {
			g.hook.Drain(2 * time.Second) // what is being stored gets its PUBACK; nothing new is taken
		}
		if g.mqtt != nil {
			errs = append(errs, g.mqtt.Close())
		}
		if g.batcher != nil {
			g.batcher.Close() // a check after this is made by its caller
		}
		g.cancel() // the relay waits for in-flight PUBACKs before it returns
		g.relayWG.Wait()
		if g.certs != nil {
			g.certs.Save() // the chains the relay's last PUBACKs acknowledged
		}

		if g.http != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			errs = append(errs, g.http.Shutdown(ctx))
			cancel()
		}
		if g.httpLn != nil {
			_ = g.httpLn.Close() // not served if Start never ran
		}
		g.wg.Wait()
		if g.inventory != nil { // after its Run: with the relay's last acknowledgements
			errs = append(errs, g.inventory.Save())
		}
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
