package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/internal/estclient"
	"github.com/vitalgate/vitalgate/internal/fleet"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// enrolFleet is a fleet of devices prefix-00001.. that start from factory
// identities and enrol over the gateway's EST listener.
func (e *env) enrolFleet(prefix string, devices int, rate float64, d time.Duration) fleet.Config {
	e.t.Helper()
	if _, err := pki.IssueFactory(e.pki, pki.FactoryOptions{Count: devices, Prefix: prefix}); err != nil {
		e.t.Fatal(err)
	}
	c := fleet.Default()
	c.PKI = e.pki
	c.Gateway = e.gw.DeviceAddr()
	c.Enroll = true
	c.EST = "https://" + e.gw.HTTPSAddr()
	c.Updates = false // no status records: the cloud sees every seq
	c.Prefix = prefix
	c.Devices = devices
	c.Rate = rate
	c.Duration = d
	c.Drain = 20 * time.Second
	c.MQTT = fleet.MQTTMix // both MQTT clients switch certificates
	c.QoS = 1
	c.State = "-"
	c.Progress = 10 * time.Second
	c.Logger = quietLog(e.t) // failed renewals are warnings
	return c
}

// seqGaps lists, per device of prefix, the seqs missing at the cloud
// between the device's first and last record there.
func (a *app) seqGaps(prefix string) map[string][]uint64 {
	seqs := map[string][]uint64{}
	for id := range a.ids() {
		dev, s, ok := strings.Cut(id, ":")
		if !ok || !strings.HasPrefix(dev, prefix+"-") {
			continue
		}
		n, err := strconv.ParseUint(s, 10, 64)
		if err == nil {
			seqs[dev] = append(seqs[dev], n)
		}
	}
	gaps := map[string][]uint64{}
	for dev, ss := range seqs {
		slices.Sort(ss)
		for i := 1; i < len(ss) && len(gaps[dev]) < 10; i++ {
			for m := ss[i-1] + 1; m < ss[i] && len(gaps[dev]) < 10; m++ {
				gaps[dev] = append(gaps[dev], m)
			}
		}
		if len(gaps[dev]) == 0 {
			delete(gaps, dev)
		}
	}
	return gaps
}

// TestRenewalLosesNothing: 50 devices at 5 records a second from factory
// identities, with 1-minute certificates, go through at least three
// renewals each (new key, reconnect with the new certificate) while they
// send: every record is accepted and reaches the cloud, none is lost or
// rejected.
func TestRenewalLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 2.5 minutes")
	}
	const devices, rate = 50, 5.0
	e := newEnv(t, func(c *config.Config) {
		c.HTTPS = "127.0.0.1:0"
		c.Enroll.Validity = time.Minute
	})
	a := e.app("ssl://" + e.gw.Cloud().AppsAddr())
	// Renewal at two thirds of 60 s: at 40, 80 and 120 s, each a little
	// later by the switch.
	cfg := e.enrolFleet("rnw", devices, rate, 130*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var last fleet.Stats
	rep, err := fleet.Run(ctx, cfg, func(s fleet.Stats) { last = s; t.Logf("%s", s) })
	if err != nil {
		t.Fatal(err)
	}
	s := rep.Stats
	t.Logf("final: %s; connects %d resent %d duplicates %d", last, s.Connects, s.Resent, s.Duplicates)

	// A renewal that fails (a timeout on a loaded machine) is retried long
	// before expiry: no device has to enrol again.
	if s.Enrolments != devices {
		t.Errorf("enrolments %d, want %d (one per device: none expired)", s.Enrolments, devices)
	}
	if s.EnrolErrors > 0 {
		t.Logf("%d renewals failed and were retried", s.EnrolErrors)
	}
	if s.Renewals < 3*devices {
		t.Errorf("renewals %d, want at least %d (three per device)", s.Renewals, 3*devices)
	}
	if s.Connects < devices+s.Renewals {
		t.Errorf("connects %d: fewer than the first connections and one per renewal (%d)", s.Connects, devices+s.Renewals)
	}
	if len(s.Rejected) != 0 || len(s.Codes) != 1 || s.Codes["0x00"] == 0 {
		t.Errorf("rejected %v, reason codes %v: want only 0x00", s.Rejected, s.Codes)
	}
	for _, v := range []string{"bad_signature", "replay", "identity_mismatch", "stale", "rate_limited"} {
		if n := e.rejected(v); n > 0 {
			t.Errorf("gateway rejected %v records as %s", n, v)
		}
	}
	// A switch waits for the PUBACKs in flight on the old connection:
	// nothing is sent twice, and no publish goes unanswered.
	if s.Resent != 0 || s.Errors != 0 || s.Duplicates != 0 {
		t.Errorf("resent %d, publish errors %d, duplicates %d: want none", s.Resent, s.Errors, s.Duplicates)
	}
	if s.Dropped != 0 || s.Buffered != 0 || s.Acked != s.Generated {
		t.Errorf("generated %d acked %d dropped %d buffered %d: every record must be accepted", s.Generated, s.Acked, s.Dropped, s.Buffered)
	}
	if min := uint64(float64(devices) * rate * 100); s.Acked < min {
		t.Errorf("acked %d, want at least %d (the fleet's rate)", s.Acked, min)
	}
	testutil.Eventually(t, 30*time.Second, fmt.Sprintf("%d accepted records at the cloud", s.Acked), func() bool {
		return uint64(a.idsWithPrefix("rnw")) >= s.Acked
	})
	if got := uint64(a.idsWithPrefix("rnw")); got != s.Acked {
		t.Errorf("cloud has %d distinct records, the fleet saw %d accepted", got, s.Acked)
	}
	if gaps := a.seqGaps("rnw"); len(gaps) > 0 {
		t.Errorf("seqs missing at the cloud: %v", gaps)
	}
}

// TestESTClient runs the device side of EST (internal/estclient) against
// the gateway's listener: cacerts, an enrolment and a renewal with a new
// key whose certificate the device listener accepts, and refusals that
// come back as errors naming the HTTP status and the server's reason.
func TestESTClient(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.HTTPS = "127.0.0.1:0" })
	if _, err := pki.IssueFactory(e.pki, pki.FactoryOptions{Count: 1, Prefix: "estc"}); err != nil {
		t.Fatal(err)
	}
	roots, err := pki.LoadPool(filepath.Join(e.pki, pki.FileCA))
	if err != nil {
		t.Fatal(err)
	}
	c, err := estclient.New("https://"+e.gw.HTTPSAddr(), roots, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cas, err := c.CACerts(ctx)
	if err != nil || len(cas) != 2 {
		t.Fatalf("cacerts: %d certificates, %v", len(cas), err)
	}
	factory, err := tls.LoadX509KeyPair(pki.FactoryPaths(e.pki, "estc-00001"))
	if err != nil {
		t.Fatal(err)
	}
	refused := func(what string, err error, status int) {
		t.Helper()
		var se *estclient.StatusError
		if !errors.As(err, &se) || se.Status != status || se.Text == "" ||
			!strings.Contains(err.Error(), fmt.Sprintf("HTTP %d %s: %s", status, http.StatusText(status), se.Text)) {
			t.Errorf("%s: %v, want HTTP %d with the server's reason", what, err, status)
		}
	}
	other, _, _ := estclient.NewCSR("estc-00002", pki.P256)
	_, err = c.SimpleEnroll(ctx, other, factory)
	refused("enrol as another device ID", err, http.StatusForbidden)

	csr, key, _ := estclient.NewCSR("estc-00001", pki.Ed25519)
	issued, err := c.SimpleEnroll(ctx, csr, factory)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := estclient.KeyPair(key, issued, cas)
	if err != nil || kp.Leaf.Subject.CommonName != "estc-00001" || len(kp.Certificate) != 2 {
		t.Fatalf("enrolled identity: %v", err)
	}
	_, err = c.SimpleReenroll(ctx, other, kp)
	refused("renew as another device ID", err, http.StatusForbidden)
	_, err = c.SimpleReenroll(ctx, csr, factory)
	refused("renew with the factory identity", err, http.StatusForbidden)

	csr2, key2, _ := estclient.NewCSR("estc-00001", pki.P256)
	renewed, err := c.SimpleReenroll(ctx, csr2, kp)
	if err != nil {
		t.Fatal(err)
	}
	kp2, err := estclient.KeyPair(key2, renewed, cas)
	if err != nil {
		t.Fatal(err)
	}
	// The device keeps its renewed identity where the helpers look for it,
	// connects with it and sends a record signed with the new key.
	crt, keyFile := pki.DevicePaths(e.pki, "estc-00001")
	var chain []byte
	for _, der := range kp2.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key2)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(crt), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(crt, chain, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	dev := e.mustDial5("estc-00001")
	if code := publish5(t, dev, telemetryTopic("estc-00001"), e.sign("estc-00001", spo2("estc-00001", 1))); code != 0 {
		t.Errorf("record signed with the renewed key: reason code 0x%02x", code)
	}
}

// TestExpiredCertificateEnrolsAgain: devices whose 1-minute certificates
// expire while the gateway is down (renewals fail, records wait in their
// buffers) enrol again with their factory identities when it is back, and
// send what they kept, signed again with the new key: nothing lost, nothing
// rejected.
func TestExpiredCertificateEnrolsAgain(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 80 seconds")
	}
	const devices = 3
	e := &env{t: t, pki: newPKI(t)}
	cl := startCloud(t, e.pki, t.TempDir(), "127.0.0.1:0", "127.0.0.1:0")
	a := e.persistentApp("ssl://" + cl.AppsAddr())
	e.cfg = testConfig(t, e.pki)
	e.cfg.Cloud = []string{"ssl://" + cl.GatewayAddr()}
	e.cfg.Listen, e.cfg.HTTPS = freeAddr(t), freeAddr(t) // the same addresses after the restart
	e.cfg.Enroll.Validity = time.Minute
	e.start()
	cfg := e.enrolFleet("exp", devices, 2, 75*time.Second)
	cfg.Progress = 5 * time.Second

	type outcome struct {
		rep fleet.Report
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		rep, err := fleet.Run(context.Background(), cfg, func(s fleet.Stats) { t.Logf("%s", s) })
		done <- outcome{rep, err}
	}()
	testutil.Eventually(t, 30*time.Second, "records of every device at the cloud", func() bool {
		return a.idsWithPrefix("exp") >= 2*devices
	})
	e.gw.Close() // renewals at 40 s fail; the certificates expire at 60 s
	downSince := time.Now()
	testutil.Eventually(t, 90*time.Second, "every certificate issued to the devices to expire", func() bool {
		for i := 1; i <= devices; i++ {
			certs, err := pki.ReadIssued(e.pki, fmt.Sprintf("exp-%05d", i))
			if err != nil || len(certs) == 0 || time.Now().Before(certs[0].NotAfter.Add(time.Second)) {
				return false
			}
		}
		return true
	})
	e.start()
	t.Logf("gateway down for %v", time.Since(downSince).Round(time.Second))

	out := <-done
	if out.err != nil {
		t.Fatal(out.err)
	}
	s := out.rep.Stats
	t.Logf("final: %s; connects %d tls_refused %d", s, s.Connects, s.TLSRefused)
	if s.Enrolments != 2*devices {
		t.Errorf("enrolments %d, want %d: each device enrols again after its certificate expired", s.Enrolments, 2*devices)
	}
	if len(s.Rejected) != 0 || s.Codes["0x00"] != s.Acked || s.Acked != s.Generated || s.Dropped != 0 {
		t.Errorf("generated %d acked %d dropped %d, rejected %v codes %v: want every record accepted",
			s.Generated, s.Acked, s.Dropped, s.Rejected, s.Codes)
	}
	testutil.Eventually(t, 30*time.Second, fmt.Sprintf("%d records at the cloud", s.Acked), func() bool {
		return uint64(a.idsWithPrefix("exp")) >= s.Acked
	})
	if gaps := a.seqGaps("exp"); len(gaps) > 0 {
		t.Errorf("seqs missing at the cloud: %v", gaps)
	}
}
