package bench

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// Result is the one JSON line of `devicesim bench`. Rates are messages per
// second delivered at the cloud subscriber; shares are fractions of all the
// machine's cores.
type Result struct {
	NProc    int      `json:"nproc"`
	CPU      string   `json:"cpu"`
	Go       string   `json:"go"`
	Devices  int      `json:"devices"`
	Kinds    []string `json:"kinds"`
	Duration float64  `json:"phase_s"`
	// The CPUs each part ran on ("": not pinned), and the runs the figures
	// are the medians of (1: a single run's figures).
	GatewayCPUs string `json:"gateway_cpus"`
	CloudCPUs   string `json:"cloud_cpus"`
	HarnessCPUs string `json:"harness_cpus"`
	Runs        int    `json:"runs"`
	// The devices' key type (p256: ES256, ed25519: EdDSA), and whether the
	// gateway checked EdDSA signatures in batches (its ed25519_batch).
	Key          string `json:"key"`
	Ed25519Batch bool   `json:"ed25519_batch"`
	// At the peak, from the gateway's batcher: signatures per batch, and the
	// share of EdDSA checks made in batches (0 without a batcher).
	SigsPerBatch float64 `json:"ed25519_sigs_per_batch"`
	BatchedShare float64 `json:"ed25519_batched_share"`

	RelayWindow    int     `json:"relay_window,omitempty"`
	Validated      float64 `json:"validated_msgs_per_s"`   // peak, end to end, gateway and harness sharing the cores
	Accepted       float64 `json:"accepted_msgs_per_s"`    // peak PUBACK 0x00 at the devices (stored durably), same window
	VerifyOnly     float64 `json:"verify_only_msgs_per_s"` // VerifyOnly on the gateway's CPUs (all when not pinned), same messages
	Ratio          float64 `json:"ratio"`                  // Validated / VerifyOnly (target >= 0.75 pinned)
	GatewayCPU     float64 `json:"gateway_cpu_share"`      // of the machine during the peak phase
	HarnessCPU     float64 `json:"harness_cpu_share"`      // fleet and subscriber (this process)
	CloudCPU       float64 `json:"cloud_cpu_share"`        // cloud broker (its own process)
	PerGatewayCore float64 `json:"validated_per_gateway_cpu_s"`
	RatioPerCore   float64 `json:"ratio_per_cpu_s"` // validated per gateway CPU-second / verify-only per CPU-second
	// VerifyOnlyPerCPU is verify-only per CPU-second this process spent in
	// that phase: unlike the rate, it does not fall when other programs
	// take the CPUs.
	VerifyOnlyPerCPU float64 `json:"verify_only_per_cpu_s"`
	PeakRejected     uint64  `json:"peak_rejected"`
	PeakFailed       uint64  `json:"peak_failed"`
	Undelivered      uint64  `json:"undelivered"` // acknowledged to devices but not delivered to the app within 30 s of a phase's end

	HalfRate    float64 `json:"latency_rate_msgs_per_s"` // target rate of the latency phase
	HalfAchieve float64 `json:"latency_achieved_msgs_per_s"`
	P50         float64 `json:"latency_p50_ms"` // device PUBLISH to cloud delivery
	P99         float64 `json:"latency_p99_ms"` // (target < 20)
	Samples     int     `json:"latency_samples"`
	AckP50      float64 `json:"latency_ack_p50_ms"` // device PUBLISH to its PUBACK (verified and stored)
	AckP99      float64 `json:"latency_ack_p99_ms"`
	PublishP99  float64 `json:"latency_gateway_publish_p99_le_ms"` // bucket bound of the gateway's own p99: PUBLISH read to verdict
	CommitP99   float64 `json:"latency_queue_commit_p99_le_ms"`    // bucket bound of the p99 of the gateway's queue commits
	HalfGateway float64 `json:"latency_gateway_cpu_share"`         // of the machine during the latency phase
	HalfHarness float64 `json:"latency_harness_cpu_share"`
	HalfCloud   float64 `json:"latency_cloud_cpu_share"`

	Idle       int     `json:"idle_connections"`
	RSSStart   int64   `json:"gateway_rss_start_bytes"`
	RSSIdle    int64   `json:"gateway_rss_idle_bytes"` // (target < 1 GiB at 10,000)
	RSSPerConn float64 `json:"gateway_rss_per_conn_bytes"`
	HeapStart  int64   `json:"gateway_heap_start_bytes"`
	HeapIdle   int64   `json:"gateway_heap_idle_bytes"`

	StormWorkers int     `json:"storm_workers"`
	FullPerS     float64 `json:"handshakes_full_per_s"`
	ResumedPerS  float64 `json:"handshakes_resumed_per_s"`
	ResumedShare float64 `json:"resumed_share"` // of the resumed storm's handshakes that did resume
	FullCPUus    float64 `json:"gateway_cpu_us_per_full_handshake"`
	ResumedCPUus float64 `json:"gateway_cpu_us_per_resumed_handshake"`
	StormFailed  uint64  `json:"storm_failed"`
	StormError   string  `json:"storm_first_error,omitempty"`
	// The storm under load: the full-handshake storm again, from identities
	// of their own, while the connected fleet sends at the latency phase's
	// rate; what the connected devices see (PUBLISH to PUBACK) and what the
	// storm gets meanwhile.
	StormLoadRate       float64 `json:"storm_connected_msgs_per_s"`
	StormLoadAckP50     float64 `json:"storm_connected_ack_p50_ms"`
	StormLoadAckP99     float64 `json:"storm_connected_ack_p99_ms"`
	StormLoadHandshakes float64 `json:"storm_connected_handshakes_full_per_s"`
	// The baselines: the same fleet and messages through the setups a user
	// would pick instead, each its own process on the gateway's CPUs (the
	// gateway stopped), mutual TLS from the devices, QoS 1 on to the cloud
	// broker, no payload check; rates at the same app. Per CPU-second: of
	// the relay's process, compared with validated_per_gateway_cpu_s.
	Baseline             float64 `json:"baseline_mochi_msgs_per_s"` // bare mochi relay, forwarding with a paho client
	BaselinePerCPU       float64 `json:"baseline_mochi_per_cpu_s"`
	BaselineDevs         int     `json:"baseline_devices"`     // fewer than devices when they would exceed the open file limit
	BaselineUndelivered  uint64  `json:"baseline_undelivered"` // acknowledged by the mochi relay, not at the app within 30 s
	VsBaseline           float64 `json:"validated_vs_baseline"`
	VsBaselinePerCPU     float64 `json:"validated_vs_baseline_per_cpu_s"`
	BaselineCPU          float64 `json:"baseline_cpu_share"`         // the mochi relay's process, of the machine
	BaselineHarnessCPU   float64 `json:"baseline_harness_cpu_share"` // fleet and app, same phase
	BaselineCloudCPU     float64 `json:"baseline_cloud_cpu_share"`
	Mosquitto            float64 `json:"baseline_mosquitto_msgs_per_s,omitempty"` // Mosquitto with a bridge; absent when not installed
	MosquittoPerCPU      float64 `json:"baseline_mosquitto_per_cpu_s,omitempty"`
	MosquittoUndelivered uint64  `json:"baseline_mosquitto_undelivered,omitempty"`
	VsMosquitto          float64 `json:"validated_vs_mosquitto,omitempty"`
	VsMosquittoPerCPU    float64 `json:"validated_vs_mosquitto_per_cpu_s,omitempty"`
	MosquittoCPU         float64 `json:"baseline_mosquitto_cpu_share,omitempty"`
	MosquittoHarnessCPU  float64 `json:"baseline_mosquitto_harness_cpu_share,omitempty"`
	MosquittoCloudCPU    float64 `json:"baseline_mosquitto_cloud_cpu_share,omitempty"`
	ElapsedSeconds       float64 `json:"elapsed_s"`

	Spread
}

// run is the state of one harness run.
type run struct {
	cfg      Config
	dir      string
	devs     []*Identity
	status   atomic.Pointer[func() string]
	res      Result
	gw       *GatewayProc
	cloud    *CloudProc
	sub      *Subscriber
	files    uint64                  // open file limit
	fleet    atomic.Pointer[Devices] // the fleet connected to the gateway, whose latencies the app looks up
	progress sync.WaitGroup
}

// Run measures everything of [Result] in one run. The phases, in order:
// issue certificates; start the cloud broker and the gateway as child
// processes; idle connections and the gateway's memory; the
// reconnect storms; verify-only; the peak; the latency phase at half the
// peak; the bare mochi baseline.
func Run(ctx context.Context, cfg Config) (Result, error) {
	cfg = cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return Result{}, err
	}
	start := time.Now()
	r := &run{cfg: cfg, dir: cfg.Dir}
	r.res = Result{NProc: runtime.NumCPU(), CPU: CPUModel(), Go: runtime.Version(), Devices: cfg.Devices,
		Kinds: cfg.Kinds, Duration: cfg.Duration.Seconds(), Idle: cfg.Idle, StormWorkers: cfg.Workers,
		RelayWindow: cfg.RelayWindow, GatewayCPUs: cfg.GatewayCPUs.String(), CloudCPUs: cfg.CloudCPUs.String(),
		HarnessCPUs: cfg.HarnessCPUs.String(), Runs: 1, Key: string(cmp.Or(cfg.Key, pki.P256)), Ed25519Batch: !cfg.SingleEd25519}
	if err := PinSelf(cfg.HarnessCPUs); err != nil {
		return r.res, err
	}
	if r.dir == "" {
		d, err := os.MkdirTemp("", "vitalgate-bench-")
		if err != nil {
			return r.res, fmt.Errorf("work directory: %w", err)
		}
		r.dir = d
		defer os.RemoveAll(d)
	}
	stop := r.startProgress()
	defer stop()
	err := r.all(ctx)
	r.res.ElapsedSeconds = round(time.Since(start).Seconds(), 1)
	return Summarize([]Result{r.res}), err
}

func (r *run) setStatus(f func() string) { r.status.Store(&f) }

func (r *run) startProgress() func() {
	if r.cfg.Progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	r.progress.Go(func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if f := r.status.Load(); f != nil {
					r.cfg.Progress((*f)())
				}
			}
		}
	})
	return func() { close(done); r.progress.Wait() }
}

func (r *run) phase(name string) {
	t0 := time.Now()
	r.setStatus(func() string { return fmt.Sprintf("%s %.0fs", name, time.Since(t0).Seconds()) })
}

func (r *run) all(ctx context.Context) (err error) {
	cfg := r.cfg
	if r.files, err = RaiseFileLimit(); err != nil {
		return err
	}
	roots, err := r.issue()
	if err != nil {
		return err
	}

	// The cloud broker, in a process of its own, without persistence.
	r.phase("starting cloud and gateway")
	bin, brokerBin, err := r.programs(ctx)
	if err != nil {
		return err
	}
	if r.cloud, err = StartCloud(ctx, brokerBin, r.pkiDir(), filepath.Join(r.dir, "cloud"), r.childCPUs(r.cfg.CloudCPUs)); err != nil {
		return err
	}
	defer stopChild(r.cloud.child, "cloud broker", &err)
	if err := r.startGateway(ctx, bin); err != nil {
		return err
	}
	defer stopChild(r.gw.child, "gateway", &err)
	if err := r.subscribe(); err != nil {
		return err
	}
	defer r.sub.Close()

	if cfg.Idle > 0 {
		if err := r.memory(ctx, roots); err != nil {
			return err
		}
	}
	if cfg.Storm > 0 {
		r.storms(ctx, roots)
	}
	if err := r.verifyOnly(); err != nil {
		return err
	}

	// Peak: enough pre-signed messages to outlast the phase at the verify-only rate (twice that with EdDSA, whose
	// batched checks can beat the single check that rate is measured with).
	fleetDevs := r.devs[:cfg.Devices]
	headroom := 1.1
	if cfg.Key == pki.Ed25519 {
		headroom = 2
	}
	per := int(math.Ceil(r.res.VerifyOnly * headroom * cfg.Duration.Seconds() / float64(cfg.Devices)))
	r.phase(fmt.Sprintf("signing %d messages", per*cfg.Devices))
	peakMsgs, err := PreSign(fleetDevs, cfg.Kinds, per, 1, cfg.Seed)
	if err != nil {
		return err
	}
	devices, err := r.connect(ctx, r.gw.DeviceAddr(), roots, fleetDevs, "gateway")
	if err != nil {
		return err
	}
	r.fleet.Store(devices)
	defer func() { devices.Close() }()
	peak, err := r.peak(ctx, devices, peakMsgs)
	if err != nil {
		return err
	}
	next, err := r.latency(ctx, devices, fleetDevs, peak, uint64(len(peakMsgs[0]))+1)
	if err == nil && cfg.Storm > 0 {
		err = r.stormUnderLoad(ctx, roots, devices, fleetDevs, next)
	}
	if err != nil {
		return err
	}
	r.fleet.Store(nil)
	devices.Close()
	// The gateway leaves its CPUs, and its client ID at the cloud, to the baselines.
	if err := r.gw.Stop(); err != nil && !isSignalExit(err) {
		return fmt.Errorf("gateway exit: %w", err)
	}
	return r.baselines(ctx, roots, fleetDevs, peakMsgs)
}

// startCPUs are the CPUs this process could use when it started, before any pinning.
var startCPUs = AllowedCPUs()

// childCPUs is the set a child process runs on: set, or, when set is empty
// but this process is pinned (which a child would inherit), the CPUs this
// process started with.
func (r *run) childCPUs(set CPUSet) CPUSet {
	if len(set) == 0 && len(r.cfg.HarnessCPUs) > 0 {
		return startCPUs
	}
	return set
}

// pkiDir is the PKI directory of the run.
func (r *run) pkiDir() string { return filepath.Join(r.dir, "pki") }

// issue creates the PKI directory and the certificates of every device the phases use, loads them into r.devs
// and returns the root CA pool.
func (r *run) issue() (*x509.CertPool, error) {
	r.phase("issuing certificates")
	pkiDir := r.pkiDir()
	if err := pki.Init(pkiDir, pki.InitOptions{Site: "site1", GatewayID: "gw1"}); err != nil && !errors.Is(err, pki.ErrExists) {
		return nil, fmt.Errorf("pki: %w", err)
	}
	n := max(r.cfg.Devices, r.cfg.Idle, r.cfg.Workers)
	if r.cfg.Storm > 0 {
		n = max(n, r.cfg.Devices+r.cfg.Workers) // the storm under load takes identities the fleet does not hold
	}
	ids, err := pki.IssueDevices(pkiDir, n, "bench", cmp.Or(r.cfg.Key, pki.P256))
	if err != nil {
		return nil, fmt.Errorf("issue devices: %w", err)
	}
	if r.devs, err = LoadIdentities(pkiDir, ids); err != nil {
		return nil, err
	}
	return pki.LoadPool(filepath.Join(pkiDir, pki.FileCA))
}

// programs returns the gateway and cloud broker programs, building those the configuration does not name.
func (r *run) programs(ctx context.Context) (gateway, broker string, err error) {
	gateway, broker = r.cfg.GatewayBin, r.cfg.BrokerBin
	if gateway == "" {
		if gateway, err = BuildGateway(ctx, r.dir); err != nil {
			return "", "", err
		}
	}
	if broker == "" {
		if broker, err = BuildBroker(ctx, r.dir); err != nil {
			return "", "", err
		}
	}
	return gateway, broker, nil
}

// startGateway starts the gateway program bin, relaying to the cloud broker, with room for every device of the
// run, and tells Notice where its profiles are.
func (r *run) startGateway(ctx context.Context, bin string) (err error) {
	if r.gw, err = StartGateway(ctx, bin, GatewayConfig{PKI: r.pkiDir(), Data: filepath.Join(r.dir, "gateway"),
		Cloud: "ssl://" + r.cloud.GatewayAddr(), MaxConnections: len(r.devs) + 1000, AcceptRate: 100_000, RatePerDevice: 100_000,
		RelayWindow: r.cfg.RelayWindow, Pprof: r.cfg.Pprof || r.cfg.CPUProfile != "", CPUs: r.childCPUs(r.cfg.GatewayCPUs),
		Extra: r.gatewayExtra()}); err != nil {
		return err
	}
	if r.cfg.Pprof && r.cfg.Notice != nil {
		r.cfg.Notice(fmt.Sprintf("gateway profiles at http://%s/debug/pprof/", r.gw.HTTPAddr()))
	}
	return nil
}

// gatewayExtra is the gateway configuration the run's options set beyond [GatewayConfig].
func (r *run) gatewayExtra() map[string]any {
	if r.cfg.SingleEd25519 {
		return map[string]any{"ed25519_batch": false}
	}
	return nil
}

// stopChild stops c and, when the run has not failed yet, makes an exit other than by signal its error.
func stopChild(c *child, name string, err *error) {
	if e := c.Stop(); e != nil && *err == nil && !isSignalExit(e) {
		*err = fmt.Errorf("%s exit: %w", name, e)
	}
}

// subscribe connects the clinician app at the cloud as r.sub; it takes latencies from the fleet in r.fleet.
func (r *run) subscribe() (err error) {
	pkiDir := r.pkiDir()
	tok, err := pki.MintToken(pkiDir, "bench-app", []string{"site1"}, time.Hour)
	if err != nil {
		return err
	}
	appTLS, err := pki.ClientTLS(filepath.Join(pkiDir, pki.FileCA), "", "")
	if err != nil {
		return err
	}
	appTLS.ServerName = "localhost"
	r.sub, err = Subscribe(SubscriberConfig{URL: "ssl://" + r.cloud.AppsAddr(), TLS: appTLS, ClientID: "bench-app",
		Username: "bench-app", Password: tok, Filter: "telemetry/site1/#",
		Latency: func(id string, now time.Time) (time.Duration, bool) {
			if d := r.fleet.Load(); d != nil {
				return d.Latency(id, now)
			}
			return 0, false
		}})
	return err
}

// verifyOnly measures envelope verification alone on a sample of the fleet's messages, on the gateway's CPUs
// when it is pinned (this process moves there for the phase, one worker per CPU).
func (r *run) verifyOnly() (err error) {
	r.phase("verify-only")
	sampleDevs := r.devs[:min(r.cfg.Devices, 600)]
	sample, err := PreSign(sampleDevs, r.cfg.Kinds, 4, 1_000_000, r.cfg.Seed)
	if err != nil {
		return err
	}
	workers := 0
	if gw := r.cfg.GatewayCPUs; len(gw) > 0 {
		back := r.cfg.HarnessCPUs
		if len(back) == 0 {
			back = startCPUs
		}
		if err := PinSelf(gw); err != nil {
			return err
		}
		defer func() {
			if e := PinSelf(back); e != nil && err == nil {
				err = e
			}
		}()
		workers = len(gw)
	}
	p0, err := ProcStat(0)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if r.res.VerifyOnly, err = VerifyOnly(sampleDevs, sample, workers, 3*time.Second, 0); err != nil {
		return err
	}
	if p1, err := ProcStat(0); err == nil && p1.CPU > p0.CPU {
		r.res.VerifyOnlyPerCPU = round(r.res.VerifyOnly*time.Since(t0).Seconds()/(p1.CPU-p0.CPU).Seconds(), 0)
	}
	r.res.VerifyOnly = round(r.res.VerifyOnly, 0)
	return nil
}

// peak drives msgs from devices unpaced and records the peak figures of the result.
func (r *run) peak(ctx context.Context, devices *Devices, msgs [][]Msg) (phaseResult, error) {
	before := devices.Counts()
	b0, n0, c0 := r.ed25519Counts()
	var prof <-chan error
	if r.cfg.CPUProfile != "" {
		prof = r.gw.cpuProfile(ctx, r.cfg.CPUProfile, min(time.Second, r.cfg.Duration/5), max(time.Second, r.cfg.Duration-2*time.Second))
	}
	pk, err := r.drive(ctx, "peak", devices, msgs, 0, r.sub.Count, r.gw.Pid(), nil)
	if prof != nil {
		if e := <-prof; e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		return pk, err
	}
	after := devices.Counts()
	b1, n1, c1 := r.ed25519Counts()
	r.setBatchFigures(b0, n0, c0, b1, n1, c1)
	r.res.Validated = round(pk.rate, 0)
	r.res.Accepted = round(pk.acked, 0)
	r.res.Undelivered += pk.undelivered
	r.res.PeakRejected, r.res.PeakFailed = after.Rejected-before.Rejected, after.Failed-before.Failed
	r.res.GatewayCPU, r.res.HarnessCPU, r.res.CloudCPU = round(pk.childShare, 3), round(pk.selfShare, 3), round(pk.cloudShare, 3)
	if r.res.VerifyOnly > 0 {
		r.res.Ratio = round(r.res.Validated/r.res.VerifyOnly, 3)
	}
	if pk.childShare > 0 {
		perCore := pk.rate / (pk.childShare * float64(r.res.NProc))
		r.res.PerGatewayCore = round(perCore, 0)
		verifyPerCPU := r.res.VerifyOnlyPerCPU
		if verifyPerCPU == 0 { // not measured: the rate over the CPUs it ran on
			verifyPerCPU = r.res.VerifyOnly / float64(r.res.NProc)
			if n := len(r.cfg.GatewayCPUs); n > 0 {
				verifyPerCPU = r.res.VerifyOnly / float64(n)
			}
		}
		r.res.RatioPerCore = round(perCore/verifyPerCPU, 3)
	}
	return pk, nil
}

// latency drives devices (connected for fleetDevs) at cfg.Rate, or at half the peak, with messages numbered from
// firstSeq, and records the latencies: at the app, of the PUBACKs and of the gateway's own histograms.
func (r *run) latency(ctx context.Context, devices *Devices, fleetDevs []*Identity, peak phaseResult, firstSeq uint64) (next uint64, err error) {
	cfg := r.cfg
	rate := cfg.Rate
	if rate == 0 {
		rate = peak.rate / 2
	}
	r.res.HalfRate = round(rate, 0)
	halfMsgs, err := r.presignPhase(fleetDevs, rate, firstSeq)
	if err != nil {
		return 0, err
	}
	acks := NewLatencies(1 << 20)
	var pub0, pub1, com0, com1 []float64 // the gateway's histogram buckets
	measure := func(on bool) {
		r.sub.Measure(on)
		devices.MeasureAcks(on, acks)
		if on {
			pub0 = r.gw.Buckets(publishHistogram, latencyBuckets)
			com0 = r.gw.Buckets(commitHistogram, latencyBuckets)
		} else {
			pub1 = r.gw.Buckets(publishHistogram, latencyBuckets)
			com1 = r.gw.Buckets(commitHistogram, latencyBuckets)
		}
	}
	half, err := r.drive(ctx, "latency", devices, halfMsgs, rate, r.sub.Count, r.gw.Pid(), measure)
	if err != nil {
		return 0, err
	}
	r.res.HalfAchieve = round(half.rate, 0)
	r.res.HalfGateway, r.res.HalfHarness, r.res.HalfCloud = round(half.childShare, 3), round(half.selfShare, 3), round(half.cloudShare, 3)
	r.res.Undelivered += half.undelivered
	n2, p50, p99 := r.sub.Latencies().Summary()
	r.res.Samples, r.res.P50, r.res.P99 = n2, ms(p50), ms(p99)
	_, p50, p99 = acks.Summary()
	r.res.AckP50, r.res.AckP99 = ms(p50), ms(p99)
	r.res.PublishP99 = bucketQuantileMS(latencyBuckets, pub0, pub1, 0.99)
	r.res.CommitP99 = bucketQuantileMS(latencyBuckets, com0, com1, 0.99)
	return firstSeq + uint64(len(halfMsgs[0])), nil
}

// presignPhase signs fleetDevs' messages, numbered from firstSeq, for a
// phase of cfg.Duration at rate msg/s over the fleet (and one more each).
func (r *run) presignPhase(fleetDevs []*Identity, rate float64, firstSeq uint64) ([][]Msg, error) {
	per := int(math.Ceil(rate*r.cfg.Duration.Seconds()/float64(r.cfg.Devices))) + 1
	r.phase(fmt.Sprintf("signing %d messages", per*r.cfg.Devices))
	return PreSign(fleetDevs, r.cfg.Kinds, per, firstSeq, r.cfg.Seed)
}

// stormUnderLoad runs the full-handshake storm from cfg.Workers identities
// the fleet does not hold while the connected fleet sends at the latency
// phase's rate (records from firstSeq on), for cfg.Duration, and records
// the fleet's PUBACK latency and the storm's rate.
func (r *run) stormUnderLoad(ctx context.Context, roots *x509.CertPool, devices *Devices, fleetDevs []*Identity, firstSeq uint64) error {
	cfg := r.cfg
	workers := r.devs[cfg.Devices : cfg.Devices+cfg.Workers]
	rate := r.res.HalfRate
	msgs, err := r.presignPhase(fleetDevs, rate, firstSeq)
	if err != nil {
		return err
	}
	acks := NewLatencies(1 << 20)
	stormCtx, stopStorm := context.WithCancel(ctx)
	defer stopStorm()
	var storm StormResult
	var wg sync.WaitGroup
	measure := func(on bool) {
		devices.MeasureAcks(on, acks)
		if on {
			wg.Go(func() { storm = Storm(stormCtx, r.gw.DeviceAddr(), roots, workers, false, cfg.Duration) })
		}
	}
	res, err := r.drive(ctx, "storm under load", devices, msgs, rate, r.sub.Count, r.gw.Pid(), measure)
	stopStorm()
	wg.Wait()
	if err != nil {
		return err
	}
	r.res.Undelivered += res.undelivered
	r.res.StormFailed += storm.Failed
	r.res.StormLoadRate = round(res.rate, 0)
	_, p50, p99 := acks.Summary()
	r.res.StormLoadAckP50, r.res.StormLoadAckP99 = ms(p50), ms(p99)
	r.res.StormLoadHandshakes = round(storm.PerSecond(), 0)
	return nil
}

func isSignalExit(err error) bool {
	var ee interface{ ExitCode() int }
	return errors.As(err, &ee) && ee.ExitCode() == -1
}
