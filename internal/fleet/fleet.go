// Package fleet simulates home-care devices against the gateway: from one
// device to 10,000 in one process, each with its own certificate, physiology
// ([github.com/vitalgate/vitalgate/internal/fleet/physio]), sequence number
// and backlog, over MQTT 3.1.1 or 5 with mutual TLS.
//
// # Use
//
// [Run] drives a fleet described by a [Config] and reports [Stats] while it
// runs and a [Report] at the end. [NewDevice], [Device.Next] and
// [SignRecord] are the single-device primitives, for `gateway demo` and tests.
//
// # Devices
//
// Device i (1-based) is Prefix-0000i with the certificate and key of
// pki.DevicePaths in the PKI directory, issued in bulk when missing and the
// device CA key is there. Its kind is Kinds[(i-1) % len(Kinds)]. A device
// measures Rate times per second, signs each record, and keeps up to Buffer
// records while the gateway is away (dropping the oldest beyond that); after
// a reconnect it sends the backlog in order. Its seq is kept in memory across
// reconnects and reserved in blocks in a small file per device in the state
// directory, so a rerun continues above every seq already sent.
//
// # Verdicts
//
// With MQTT 5 the PUBACK reason code is the gateway's verdict
// (docs/protocol.md#4-verdicts-and-reason-codes). Several verdicts share a code, so counts are kept by reason
// code, and, for attack messages, by the attack's expected verdict when the
// code matches it. With MQTT 3.1.1 a rejected message is acknowledged like
// an accepted one: rejections are invisible there.
//
// # Enrolment
//
// With Enroll set, device i starts from its factory identity
// (pki.FactoryPaths) instead of a device certificate: the fleet fetches the
// EST server's CA certificates, and each device enrols a new key
// (simpleenroll) before its first connection. It renews with a new key
// (simplereenroll) at two thirds of its certificate's lifetime, finishes
// the messages in flight on the old connection, and reconnects with the new
// certificate, signing its buffered records again with the new key; an
// expired certificate enrols again with the factory identity. Counts are in
// [Stats] (Enrolments, Renewals, EnrolErrors).
//
// # Faults
//
// ClockSkew moves the devices' clocks (the ts of their records) ahead, or
// behind when negative. Offline makes the devices measure into their buffer
// for that long before their first connection, then send the backlog.
//
// # Attacks
//
// With Attack set, the first Attackers devices (all by default) attack. Each
// sends at most AttackBudget attack messages a minute (under the gateway's
// quarantine threshold, so the verdict stays the one named) and normal
// records otherwise. rate_limited sends bursts as fast as acknowledgements
// come until AttackBudget rejections; revoked connects with revoked
// certificates (its own devices, Prefix-revoked-0000i) and expects the TLS
// handshake refused; flood reconnects in a loop without ramp and publishes
// a burst on every connection. burst and flap behave normally for
// AttackAfter, then send BurstFactor times their rate (valid records), or
// drop and re-establish their connection every FlapEvery or so: no verdict
// sees them, only the gateway's behaviour baselines (anomaly events).
package fleet

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/vitalgate/vitalgate/internal/estclient"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/update"
)

// ErrUnreachable is returned by [Run] when the gateway does not accept TCP
// connections at the start.
var ErrUnreachable = errors.New("gateway unreachable")

// ErrCertificates is returned by [Run] when the PKI directory lacks the
// certificates the fleet needs and cannot issue them.
var ErrCertificates = errors.New("certificates missing")

// unreachableError reads "gateway ADDR unreachable: connection refused".
type unreachableError struct {
	addr string
	err  error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("gateway %s unreachable: %s", e.addr, errnoText(e.err))
}
func (e *unreachableError) Unwrap() []error { return []error{ErrUnreachable, e.err} }

// counters are the fleet's shared, lock-free counters.
type counters struct {
	connected, buffered                         atomic.Int64
	connects, connectErrors, tlsRefused         atomic.Uint64
	generated, sent, resent, acked, answered    atomic.Uint64
	duplicates, dropped, errors                 atomic.Uint64
	connacks, codes, attackCodes                [256]atomic.Uint64
	attackSent, attackMatched, revokedConnected atomic.Uint64
	enrolments, renewals, enrolErrors           atomic.Uint64
	statuses                                    [2]atomic.Uint64 // status records acknowledged 0x00, refused
	latency                                     histogram
}

// fleet is one Run.
type fleet struct {
	cfg        Config
	ctr        counters
	limiter    *rate.Limiter
	roots      *tls.Config // template: RootCAs, ServerName, MinVersion
	log        *slog.Logger
	wg         sync.WaitGroup
	start      time.Time
	expectCode byte
	hasExpect  bool
	settle     time.Duration // revoked attackers wait this long before their first attempt
	est        *estclient.Client
	cas        []*x509.Certificate // the EST server's CA certificates
	enrolled   map[string]*renewal // each device's first certificate, when the fleet enrols
	updatePub  crypto.PublicKey    // update-signing.pub, nil when the PKI has none
}

// Run starts the fleet, calls progress (if not nil) every cfg.Progress with a
// snapshot, and returns the report when cfg.Duration has passed (plus up to
// cfg.Drain to send the backlog) or ctx is done. Errors before the first
// connection are [ErrCertificates], [ErrUnreachable] or a configuration
// error; once devices run, connection problems are counted, not returned.
func Run(ctx context.Context, cfg Config, progress func(Stats)) (Report, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return Report{}, err
	}
	f := &fleet{cfg: cfg, log: cfg.Logger}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	f.expectCode, f.hasExpect = expectedCode(cfg.Attack)

	runners, err := f.prepare(ctx)
	if err != nil {
		return Report{}, err
	}
	if err := probe(ctx, cfg.Gateway, cfg.Timeout); err != nil {
		return Report{}, err
	}
	rep := Report{Config: cfg, Kinds: map[string]int{}}
	for _, r := range runners {
		if r.dev != nil {
			rep.Kinds[r.dev.Kind]++
		}
	}

	burst := 1
	if cfg.Ramp == 0 || cfg.Attack == AttackFlood {
		f.limiter = rate.NewLimiter(rate.Inf, 1)
	} else {
		burst = max(1, int(cfg.Ramp/10))
		f.limiter = rate.NewLimiter(rate.Limit(cfg.Ramp), burst)
	}

	f.start = time.Now()
	rep.Start = f.start
	hard, cancelHard := context.WithCancel(ctx)
	defer cancelHard()
	stopGen := make(chan struct{})
	if cfg.Duration > 0 {
		t := time.AfterFunc(cfg.Duration, func() {
			close(stopGen)
			time.AfterFunc(cfg.Drain, cancelHard)
		})
		defer t.Stop()
	}
	var done sync.WaitGroup
	for _, r := range runners {
		done.Go(func() { r.run(hard, stopGen) })
	}
	allDone := make(chan struct{})
	go func() { done.Wait(); close(allDone) }()

	var rt rateTracker
	tick := time.NewTicker(cfg.Progress)
	defer tick.Stop()
loop:
	for {
		select {
		case <-allDone:
			break loop
		case <-tick.C:
			if progress != nil {
				progress(f.snapshot(&rt))
			}
		}
	}
	cancelHard()
	f.wg.Wait() // publish and connect goroutines
	rep.End = time.Now()
	rep.Stats = f.snapshot(&rt)
	if progress != nil {
		progress(rep.Stats)
	}
	rep.Attack = f.attackReport()
	return rep, nil
}

// probe dials the gateway once, so that a fleet against nothing fails fast
// with a clear error.
func probe(ctx context.Context, addr string, timeout time.Duration) error {
	d := net.Dialer{Timeout: min(timeout, 5*time.Second)}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return &unreachableError{addr: addr, err: err}
	}
	return c.Close()
}

// prepare checks and issues certificates and builds one runner per device.
func (f *fleet) prepare(ctx context.Context) ([]*runner, error) {
	cfg := f.cfg
	caFile := filepath.Join(cfg.PKI, pki.FileCA)
	if _, err := os.Stat(caFile); err != nil {
		return nil, fmt.Errorf("%w: %s (create the PKI with `certs init --dir %s`)", ErrCertificates, caFile, cfg.PKI)
	}
	roots, err := pki.LoadPool(caFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCertificates, err)
	}
	host, _, _ := net.SplitHostPort(cfg.Gateway)
	f.roots = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: host}
	if cfg.Updates {
		// Without the vendor key every manifest is refused as forged.
		if f.updatePub, err = update.LoadPublicKey(filepath.Join(cfg.PKI, pki.FileUpdateSigningPub)); err != nil {
			f.log.Warn("devices refuse every update", "err", err)
		}
	}

	var ids []string
	if cfg.Enroll {
		ids, err = f.enrolAll(ctx, roots)
	} else {
		ids, err = ensureDevices(cfg.PKI, cfg.Prefix, cfg.Devices, pki.KeyAlg(cfg.Key))
	}
	if err != nil {
		return nil, err
	}
	var revoked []string
	if cfg.Attack == AttackRevoked {
		revoked, err = ensureDevices(cfg.PKI, cfg.Prefix+"-revoked", cfg.Attackers, pki.KeyAlg(cfg.Key))
		if err != nil {
			return nil, err
		}
		crl := filepath.Join(cfg.PKI, pki.FileCRL)
		before := stamp(crl)
		for _, id := range revoked {
			if err := pki.Revoke(cfg.PKI, id); err != nil {
				return nil, fmt.Errorf("revoke %s: %w", id, err)
			}
		}
		if stamp(crl) != before { // the gateway polls crl.pem: give it time to see the change
			f.settle = cfg.RevokeSettle
		}
	}
	var store *seqStore
	if cfg.State != "-" {
		if store, err = newSeqStore(cfg.State); err != nil {
			return nil, err
		}
	}

	all := make([]*runner, len(ids)+len(revoked))
	errs := make([]error, len(all))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(all) {
					return
				}
				if i < len(ids) {
					all[i], errs[i] = f.newRunner(i, ids[i], ids, store)
				} else {
					all[i], errs[i] = f.newRevokedRunner(revoked[i-len(ids)])
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return all, nil
}

// ensureDevices returns the IDs prefix-00001..prefix-{n}, issuing the
// certificates that are missing when the device CA key is there.
func ensureDevices(dir, prefix string, n int, key pki.KeyAlg) ([]string, error) {
	ids := make([]string, n)
	missing := 0
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%05d", prefix, i+1)
		c, k := pki.DevicePaths(dir, ids[i])
		if !exists(c) || !exists(k) {
			missing++
		}
	}
	if missing == 0 {
		return ids, nil
	}
	caKey := filepath.Join(dir, pki.FileDeviceCAKey)
	if !exists(caKey) {
		c, _ := pki.DevicePaths(dir, ids[0])
		return nil, fmt.Errorf("%w: %d of %d device certificates (e.g. %s), and no %s to issue them",
			ErrCertificates, missing, n, c, caKey)
	}
	if _, err := pki.IssueDevices(dir, n, prefix, key); err != nil {
		return nil, fmt.Errorf("%w: issue devices: %v", ErrCertificates, err)
	}
	return ids, nil
}

// stamp identifies a version of a file by modification time and size.
func stamp(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	return fmt.Sprint(fi.ModTime().UnixNano(), fi.Size())
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
