package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/gateway/internal/clocktrust"
	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/internal/testutil"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// injectedClock is the gateway's clock and the kernel's synchronisation
// state, as a test sets them.
type injectedClock struct {
	mu     sync.Mutex
	now    time.Time
	synced bool
}

func (c *injectedClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *injectedClock) Kernel() (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.synced, nil
}

func (c *injectedClock) set(now time.Time, synced bool) {
	c.mu.Lock()
	c.now, c.synced = now, synced
	c.mu.Unlock()
}

// TestWrongClockAtBoot: a gateway that boots with its clock far in the past,
// then far in the future, lets devices connect (their certificates checked
// at the clock's floor, not at the wrong time), stores what devices send (which a wrong clock
// would refuse as future or stale), marks it clock_untrusted at the cloud,
// and says so in events, metrics, /healthz and /readyz; once the kernel
// says the clock is synchronised, time is judged again.
func TestWrongClockAtBoot(t *testing.T) {
	clk := &injectedClock{now: time.Date(1970, 1, 1, 0, 1, 0, 0, time.UTC)}
	tuneClock = func(o *clocktrust.Options) { o.Now, o.Kernel = clk.Now, clk.Kernel }
	defer func() { tuneClock = nil }()
	e := newEnv(t, func(c *config.Config) { c.Audit.Interval = time.Hour })
	if err := e.gw.audit.Sync(); err != nil || !auditHas(t, e.cfg.Data, `"`+EventClockUntrusted+`"`, "behind its floor") {
		t.Fatal("no clock_untrusted event at start in the audit log")
	}
	e.checkClockEndpoints(false)
	a := e.app("ssl://" + e.gw.Cloud().AppsAddr())
	e.device("oxi-1")
	dev := e.mustDial5("oxi-1")
	send := func(seq uint64, ts time.Time) byte {
		r := spo2("oxi-1", seq)
		r.TS = ts.UnixMilli()
		return publish5(t, dev, telemetryTopic("oxi-1"), e.sign("oxi-1", r))
	}

	// 1970: a record of now would be future, one of last month stale.
	real := time.Now()
	if rc := send(1, real); rc != 0 {
		t.Fatalf("record of now, clock in 1970: reason 0x%02x", rc)
	}
	if rc := send(2, real.Add(-30*24*time.Hour)); rc != 0 {
		t.Fatalf("record of last month, clock in 1970: reason 0x%02x", rc)
	}
	// Three years ahead, free-running: a record of now would be stale.
	clk.set(real.Add(3*clocktrust.DefaultMaxAhead), false)
	if st := e.gw.clock.Check(); st.Trusted || !strings.Contains(st.Reason, "past its floor") {
		t.Fatalf("far future: %+v", st)
	}
	if rc := send(3, real); rc != 0 {
		t.Fatalf("record of now, clock three years ahead: reason 0x%02x", rc)
	}
	// A device connecting now: its certificate would be expired by the
	// clock (the handshake reads the injected clock); it is checked at the
	// floor instead.
	e.device("oxi-2")
	dev2 := e.mustDial5("oxi-2")
	r2 := spo2("oxi-2", 1)
	r2.TS = real.UnixMilli()
	if rc := publish5(t, dev2, telemetryTopic("oxi-2"), e.sign("oxi-2", r2)); rc != 0 {
		t.Fatalf("device connected while the clock is three years ahead: reason 0x%02x", rc)
	}
	if n := e.metric("vitalgate_clock_untrusted_records_total", ""); n != 4 {
		t.Fatalf("vitalgate_clock_untrusted_records_total %v, want 4", n)
	}

	// NTP synchronises the clock: trusted, an event, and time judged again.
	clk.set(time.Now(), true)
	if st := e.gw.clock.Check(); !st.Trusted {
		t.Fatalf("synchronised: %+v", st)
	}
	if err := e.gw.audit.Sync(); err != nil || !auditHas(t, e.cfg.Data, `"`+EventClockTrusted+`"`, "synchronised: true") {
		t.Fatal("no clock_trusted event in the audit log")
	}
	e.checkClockEndpoints(true)
	if rc := send(4, time.Now()); rc != 0 {
		t.Fatalf("record of now, synchronised clock: reason 0x%02x", rc)
	}
	if rc := send(5, time.Now().Add(time.Hour)); rc != verdict.Future.Code().Code {
		t.Fatalf("record an hour ahead, synchronised clock: reason 0x%02x, want future", rc)
	}
	if _, err := os.Stat(filepath.Join(e.cfg.Data, clocktrust.FloorFile)); err != nil {
		t.Fatalf("no floor file after the sync: %v", err)
	}

	testutil.Eventually(t, 10*time.Second, "the four records at the app", func() bool {
		ids := a.ids()
		return ids["oxi-1:1"] == 1 && ids["oxi-1:2"] == 1 && ids["oxi-1:3"] == 1 && ids["oxi-1:4"] == 1
	})
	for id, want := range map[string]bool{"oxi-1:1": true, "oxi-1:2": true, "oxi-1:3": true, "oxi-1:4": false} {
		if m, _ := a.message(id); m.ClockUntrusted != want {
			t.Errorf("%s: clock_untrusted %v, want %v", id, m.ClockUntrusted, want)
		}
	}
	// The untrusted event at start came before the app subscribed (events
	// are not retained): the audit log has it.
	testutil.Eventually(t, 10*time.Second, "the clock_trusted event at the app", func() bool {
		return a.eventsWith(`"verdict":"clock_trusted"`) == 1
	})
	if n := e.metric("vitalgate_clock_untrusted_records_total", ""); n != 4 {
		t.Fatalf("vitalgate_clock_untrusted_records_total %v after the sync, want 4", n)
	}
}

// checkClockEndpoints checks what the metric, /healthz and /readyz say of the
// clock. An untrusted clock does not make the gateway unready: it still
// stores what devices send.
func (e *env) checkClockEndpoints(trusted bool) {
	e.t.Helper()
	want := 0.0
	if trusted {
		want = 1
	}
	if g := e.metric("vitalgate_clock_trusted", ""); g != want {
		e.t.Fatalf("vitalgate_clock_trusted %v, want %v", g, want)
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + e.gw.HTTPAddr() + path)
		if err != nil {
			e.t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		return resp.StatusCode, string(b)
	}
	code, body := get("/healthz")
	if code != 200 || strings.Contains(body, "clock untrusted") == trusted {
		e.t.Fatalf("/healthz, clock trusted %v: %d %q", trusted, code, body)
	}
	code, body = get("/readyz")
	var st struct {
		Ready bool `json:"ready"`
		Clock struct {
			Trusted bool   `json:"trusted"`
			Reason  string `json:"reason"`
		} `json:"clock"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil || code != 200 || !st.Ready || st.Clock.Trusted != trusted || (st.Clock.Reason == "") != trusted {
		e.t.Fatalf("/readyz, clock trusted %v: %d %s (%v)", trusted, code, body, err)
	}
}

// TestVerifyClientAt: while the clock is untrusted, a chain is checked at the
// floor or the leaf's notBefore, whichever is later: a certificate issued
// after the floor passes, one expired before the floor is refused, and one
// from another CA or without client authentication is refused as always.
func TestVerifyClientAt(t *testing.T) {
	floor := time.Now().Add(-time.Hour)
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"},
		NotBefore: floor.Add(-48 * time.Hour), NotAfter: floor.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	leaf := func(nb, na time.Time, eku x509.ExtKeyUsage, signer *ecdsa.PrivateKey, parent *x509.Certificate) [][]byte {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "dev"},
			NotBefore: nb, NotAfter: na, ExtKeyUsage: []x509.ExtKeyUsage{eku}, KeyUsage: x509.KeyUsageDigitalSignature}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &k.PublicKey, signer)
		if err != nil {
			t.Fatal(err)
		}
		return [][]byte{der}
	}
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	client := x509.ExtKeyUsageClientAuth
	for _, c := range []struct {
		name string
		raw  [][]byte
		ok   bool
	}{
		{"issued after the floor", leaf(floor.Add(time.Minute), floor.Add(24*time.Hour), client, caKey, ca), true},
		{"valid at the floor", leaf(floor.Add(-time.Hour), floor.Add(time.Hour), client, caKey, ca), true},
		{"expired before the floor", leaf(floor.Add(-48*time.Hour), floor.Add(-time.Minute), client, caKey, ca), false},
		{"another CA", leaf(floor.Add(-time.Hour), floor.Add(time.Hour), client, otherKey, caTmpl), false},
		{"server certificate", leaf(floor.Add(-time.Hour), floor.Add(time.Hour), x509.ExtKeyUsageServerAuth, caKey, ca), false},
		{"no certificate", nil, false},
		{"garbage", [][]byte{[]byte("not a certificate")}, false},
	} {
		if err := verifyClientAt(c.raw, roots, floor); (err == nil) != c.ok {
			t.Errorf("%s: error %v, want ok %v", c.name, err, c.ok)
		}
	}
}
