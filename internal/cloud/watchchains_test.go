package cloud

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// chainOf is the chain a gateway publishes for dev-00001: its certificate,
// then the device CA, as PEM.
func chainOf(t *testing.T, dir string) []byte {
	t.Helper()
	crt, _ := pki.DevicePaths(dir, "dev-00001")
	var out []byte
	for _, f := range []string{crt, filepath.Join(dir, pki.FileDeviceCA)} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b...)
	}
	return out
}

// forgedChain is a self-signed client certificate with the device's CN, and its key.
func forgedChain(t *testing.T) ([]byte, crypto.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "dev-00001", Organization: []string{"VitalGate"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key
}

// TestWatchWithCAOnly runs the watcher with ca.crt alone against a real
// broker: a record before the device's chain is unverified, the gateway's
// retained chain makes it verify, a forged chain is rejected and its key
// verifies nothing.
func TestWatchWithCAOnly(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, ""))
	caFile := filepath.Join(t.TempDir(), "ca.crt") // nothing else of the PKI beside it
	ca, err := os.ReadFile(filepath.Join(dir, pki.FileCA))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, ca, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, events logBuf
	done := make(chan error, 1)
	go func() {
		done <- Watch(ctx, WatchOptions{CA: caFile, Token: mint(t, dir, "site1"), Site: "site1", URL: "ssl://" + b.AppsAddr()}, &out, &events)
	}()
	testutil.Eventually(t, waitFor, "watch subscribed", func() bool { return strings.Contains(events.String(), "subscribed to telemetry/site1/#") })

	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	record := func(a *wire.Accepted) {
		msg, err := wire.Encode(wire.CBOR, a)
		if err != nil {
			t.Fatal(err)
		}
		wait(t, gw.Publish("telemetry/site1/dev-00001/spo2", 1, false, msg), "publish record")
	}
	lines := func(n int) []string {
		t.Helper()
		testutil.Eventually(t, waitFor, "watch lines", func() bool { return strings.Count(out.String(), "\n") >= n })
		return strings.Split(strings.TrimSpace(out.String()), "\n")
	}
	record(signedMessage(t, dir, 1, 97))
	if l := lines(1); !strings.HasSuffix(l[0], "[unverified (no certificate yet)]") {
		t.Fatalf("record before any chain: %q", l[0])
	}
	wait(t, gw.Publish("certs/site1/dev-00001", 1, true, chainOf(t, dir)), "publish chain")
	if l := lines(2); !strings.Contains(l[1], "certificate of dev-00001: chain ok") {
		t.Fatalf("chain line: %q", l[1])
	}
	record(signedMessage(t, dir, 2, 96))
	if l := lines(3); !strings.HasSuffix(l[2], "[sig ok]") {
		t.Fatalf("record after the chain: %q", l[2])
	}
	forged, key := forgedChain(t)
	wait(t, gw.Publish("certs/site1/dev-00001", 1, true, forged), "publish forged chain")
	if l := lines(4); !strings.Contains(l[3], "certificate of dev-00001 REJECTED: does not chain to ca.crt") {
		t.Fatalf("forged chain line: %q", l[3])
	}
	record(signedBy(t, key, 3, 95))
	record(signedMessage(t, dir, 4, 94))
	l := lines(6)
	if !strings.Contains(l[4], "[SIG BAD") || !strings.HasSuffix(l[5], "[sig ok]") {
		t.Fatalf("after the forged chain:\n%s\n%s", l[4], l[5])
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestWatcherChainsOfARenewal: after a renewed certificate is published,
// records signed with the previous key (queued before the renewal) still
// verify, as do the new key's; a chain of another device's CN, one that is
// not PEM and one that is too long are rejected.
func TestWatcherChainsOfARenewal(t *testing.T) {
	dir := testPKI(t)
	w, err := NewChainWatcher(filepath.Join(dir, pki.FileCA), 0)
	if err != nil {
		t.Fatal(err)
	}
	const topic = "certs/site1/dev-00001"
	if c := w.HandleChain(topic, chainOf(t, dir)); c.Err != nil {
		t.Fatal(c.Line())
	}
	old := signedMessage(t, dir, 1, 97)
	crt, key := pki.DevicePaths(dir, "dev-00001")
	for _, f := range []string{crt, key} {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	if err := pki.IssueDevice(dir, "dev-00001", pki.Ed25519, 0); err != nil {
		t.Fatal(err)
	}
	if c := w.HandleChain(topic, chainOf(t, dir)); c.Err != nil {
		t.Fatal(c.Line())
	}
	for _, a := range []*wire.Accepted{old, signedMessage(t, dir, 2, 96)} {
		msg, err := wire.Encode(wire.CBOR, a)
		if err != nil {
			t.Fatal(err)
		}
		if s, err := w.Handle("telemetry/site1/dev-00001/spo2", msg); err != nil || s.Status != SigOK {
			t.Errorf("seq %d: %+v %v", a.Rec.Seq, s, err)
		}
	}
	for name, tc := range map[string]struct {
		topic   string
		payload []byte
		want    string
	}{
		"other device": {"certs/site1/dev-00002", chainOf(t, dir), `certificate CN "dev-00001" is not the device dev-00002`},
		"not PEM":      {topic, []byte("hello"), "not a PEM certificate chain"},
		"too long":     {topic, []byte(strings.Repeat("x", maxChainBytes+1)), "exceeds"},
		"bad topic":    {"certs/site1/dev-00001/x", chainOf(t, dir), "is not certs/{site}/{device}"},
	} {
		if c := w.HandleChain(tc.topic, tc.payload); c.Err == nil || !strings.Contains(c.Err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, c.Err, tc.want)
		}
	}
}
