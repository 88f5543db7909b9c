package fleet

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vitalgate/vitalgate/internal/estclient"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// identity is a device's operational certificate (leaf and issuing CA) and
// its key.
type identity struct {
	cert    tls.Certificate
	key     crypto.Signer
	renewAt time.Time // two thirds into the certificate's lifetime
}

// notAfter is the end of the certificate's validity.
func (id identity) notAfter() time.Time { return id.cert.Leaf.NotAfter }

// newIdentity makes the identity of an enrolment answer, obtained at now.
// The lifetime counts from now or notBefore, whichever is later: issuers
// backdate notBefore for clock skew.
func newIdentity(key crypto.Signer, issued, cas []*x509.Certificate, now time.Time) (identity, error) {
	kp, err := estclient.KeyPair(key, issued, cas)
	if err != nil {
		return identity{}, err
	}
	start := now
	if kp.Leaf.NotBefore.After(now) {
		start = kp.Leaf.NotBefore
	}
	if !kp.Leaf.NotAfter.After(start) {
		return identity{}, fmt.Errorf("enrolment answer: certificate already expired (%s)", kp.Leaf.NotAfter.Format(time.RFC3339))
	}
	life := kp.Leaf.NotAfter.Sub(start)
	return identity{cert: kp, key: key, renewAt: start.Add(life * 2 / 3)}, nil
}

// enroller gets one device's operational certificates over EST: with the
// factory identity (simpleenroll) at the start and after expiry, with the
// current certificate and a new key (simplereenroll) to renew.
type enroller struct {
	est     *estclient.Client
	cas     []*x509.Certificate // from cacerts, at the start of the run (set before the first enrolment)
	id      string
	alg     pki.KeyAlg
	factory tls.Certificate
	ctr     *counters
}

// newEnroller loads device id's factory identity.
func (f *fleet) newEnroller(id string) (*enroller, error) {
	certFile, keyFile := pki.FactoryPaths(f.cfg.PKI, id)
	kp, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: factory identity of %s: %v (issue them with `certs factory`)", ErrCertificates, id, err)
	}
	return &enroller{est: f.est, id: id, alg: pki.KeyAlg(f.cfg.Key), factory: kp, ctr: &f.ctr}, nil
}

// enrol gets a first certificate for a new key with the factory identity.
func (e *enroller) enrol(ctx context.Context) (identity, error) {
	csr, key, err := estclient.NewCSR(e.id, e.alg)
	if err != nil {
		return identity{}, err
	}
	certs, err := e.est.SimpleEnroll(ctx, csr, e.factory)
	if err != nil {
		e.ctr.enrolErrors.Add(1)
		return identity{}, fmt.Errorf("enrol %s: %w", e.id, err)
	}
	id, err := newIdentity(key, certs, e.cas, time.Now())
	if err != nil {
		e.ctr.enrolErrors.Add(1)
		return identity{}, fmt.Errorf("enrol %s: %w", e.id, err)
	}
	e.ctr.enrolments.Add(1)
	return id, nil
}

// renew replaces cur with a certificate for a new key, or enrols again
// with the factory identity when cur has expired.
func (e *enroller) renew(ctx context.Context, cur identity) (identity, error) {
	if !time.Now().Before(cur.notAfter()) {
		return e.enrol(ctx)
	}
	csr, key, err := estclient.NewCSR(e.id, e.alg)
	if err != nil {
		return identity{}, err
	}
	certs, err := e.est.SimpleReenroll(ctx, csr, cur.cert)
	if err != nil {
		e.ctr.enrolErrors.Add(1)
		return identity{}, fmt.Errorf("renew %s: %w", e.id, err)
	}
	id, err := newIdentity(key, certs, e.cas, time.Now())
	if err != nil {
		e.ctr.enrolErrors.Add(1)
		return identity{}, fmt.Errorf("renew %s: %w", e.id, err)
	}
	e.ctr.renewals.Add(1)
	return id, nil
}

// enrolRetrying enrols, retrying (at most 5 times) while the server answers
// 429 or 503: a fleet enrolling at once meets the server's rate limit.
func (e *enroller) enrolRetrying(ctx context.Context) (identity, error) {
	for attempt := 0; ; attempt++ {
		id, err := e.enrol(ctx)
		var se *estclient.StatusError
		if err == nil || attempt == 5 || !errors.As(err, &se) ||
			se.Status != http.StatusTooManyRequests && se.Status != http.StatusServiceUnavailable {
			return id, err
		}
		wait := time.Duration(500+rand.IntN(1000)) * time.Millisecond << attempt
		if s, err := strconv.Atoi(se.RetryAfter); err == nil && s > 0 {
			wait = time.Duration(min(s, 30)) * time.Second
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return identity{}, ctx.Err()
		case <-t.C:
		}
	}
}

// renewResult is the outcome of a renewal.
type renewResult struct {
	id  identity
	err error
}

// renewal is a runner's certificate life: the current identity, the timer
// of the next renewal, and a renewed identity waiting for the messages in
// flight on the old connection to be answered before the switch. It is
// owned by the runner's goroutine; a nil *renewal (no enrolment) does
// nothing.
type renewal struct {
	e        *enroller
	cur      identity
	timer    *time.Timer
	ch       chan renewResult
	next     *identity
	failures int
}

func newRenewal(e *enroller, cur identity) *renewal {
	return &renewal{e: e, cur: cur, timer: time.NewTimer(time.Until(cur.renewAt)), ch: make(chan renewResult, 1)}
}

// due fires when a renewal is to start.
func (rn *renewal) due() <-chan time.Time {
	if rn == nil {
		return nil
	}
	return rn.timer.C
}

// results delivers the outcome of a renewal under way.
func (rn *renewal) results() <-chan renewResult {
	if rn == nil {
		return nil
	}
	return rn.ch
}

// start renews in a goroutine of the fleet.
func (rn *renewal) start(ctx context.Context, f *fleet) {
	cur := rn.cur
	f.wg.Go(func() {
		id, err := rn.e.renew(ctx, cur)
		rn.ch <- renewResult{id, err}
	})
}

// took takes a renewal's outcome: a new identity waits for the switch; a
// failure retries with backoff, sooner as expiry nears.
func (rn *renewal) took(res renewResult, log func(msg string, args ...any)) {
	if res.err == nil {
		rn.next, rn.failures = &res.id, 0
		return
	}
	if errors.Is(res.err, context.Canceled) {
		return
	}
	log("renewal failed", "device", rn.e.id, "err", res.err)
	rn.failures++
	wait := min(time.Second<<min(rn.failures, 5), max(time.Second, time.Until(rn.cur.notAfter())/4))
	rn.timer.Reset(time.Duration(float64(wait) * (0.5 + rand.Float64())))
}

// switching reports whether a renewed identity waits for the switch: no
// new message goes out on the old connection meanwhile.
func (rn *renewal) switching() bool { return rn != nil && rn.next != nil }

// take makes the renewed identity current and schedules its renewal.
func (rn *renewal) take() identity {
	rn.cur, rn.next = *rn.next, nil
	rn.timer.Reset(time.Until(rn.cur.renewAt))
	return rn.cur
}

func (rn *renewal) stop() {
	if rn != nil {
		rn.timer.Stop()
	}
}

// switchIdentity moves the device to its renewed certificate once nothing
// is in flight on the old connection: it closes that connection, takes the
// new key and certificate (with a fresh TLS session cache: a resumed
// session would carry the old certificate), and signs the buffered records
// again with the new key. It reports whether it switched; the caller then
// connects.
func (r *runner) switchIdentity() (bool, error) {
	if !r.rn.switching() || len(r.inflight) > 0 {
		return false, nil
	}
	r.disconnect()
	id := r.rn.take()
	r.key = id.key
	tc := r.tls.Clone()
	tc.Certificates = []tls.Certificate{id.cert}
	tc.ClientSessionCache = tls.NewLRUClientSessionCache(1)
	r.tls = tc
	for _, e := range r.pending {
		if e.rec == nil {
			continue
		}
		p, err := SignRecord(r.key, r.id, e.rec)
		if err != nil {
			return true, err
		}
		e.payload = p
	}
	return true, nil
}

// enrolWorkers bounds the enrolments under way at the start of a run.
const enrolWorkers = 8

// enrolAll enrols the fleet's devices (Prefix-00001...) over EST with their
// factory identities and returns their IDs. Each device's certificate and
// renewal wait in f.enrolled for its runner.
func (f *fleet) enrolAll(ctx context.Context, roots *x509.CertPool) ([]string, error) {
	est, err := estclient.New(f.cfg.EST, roots, f.cfg.Timeout)
	if err != nil {
		return nil, err
	}
	f.est = est
	ids := make([]string, f.cfg.Devices)
	ens := make([]*enroller, len(ids))
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%05d", f.cfg.Prefix, i+1)
		if ens[i], err = f.newEnroller(ids[i]); err != nil {
			return nil, err
		}
	}
	if f.cas, err = est.CACerts(ctx); err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			u, _ := url.Parse(f.cfg.EST)
			return nil, &unreachableError{addr: u.Host, err: err}
		}
		return nil, fmt.Errorf("enrolment: %w", err)
	}
	rns := make([]*renewal, len(ids))
	errs := make([]error, len(ids))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(enrolWorkers, len(ids)) {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < len(ids); i = int(next.Add(1)) - 1 {
				ens[i].cas = f.cas
				id, err := ens[i].enrolRetrying(ctx)
				if err != nil {
					errs[i] = err
					continue
				}
				rns[i] = newRenewal(ens[i], id)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	f.enrolled = make(map[string]*renewal, len(ids))
	for i, id := range ids {
		f.enrolled[id] = rns[i]
	}
	return ids, nil
}

// deviceCert is device id's TLS identity: its enrolled certificate with
// the renewal that keeps it, or the certificate in the PKI directory.
func (f *fleet) deviceCert(id string) (tls.Certificate, *renewal, error) {
	if rn := f.enrolled[id]; rn != nil {
		return rn.cur.cert, rn, nil
	}
	certFile, keyFile := pki.DevicePaths(f.cfg.PKI, id)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("%w: device %s: %v", ErrCertificates, id, err)
	}
	return cert, nil, nil
}
