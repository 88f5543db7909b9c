package certpub

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// TestChainThroughIssuingCA: a certificate the gateway's issuing CA signed
// is published with the issuing CA and the device CA; one of an unknown
// issuer is not published at all.
func TestChainThroughIssuingCA(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{Site: "site1", GatewayID: "gw1"}); err != nil {
		t.Fatal(err)
	}
	issuing, err := pki.LoadCert(filepath.Join(dir, pki.FileIssuingCA))
	if err != nil {
		t.Fatal(err)
	}
	issuingKey, err := pki.LoadKey(filepath.Join(dir, pki.FileIssuingCAKey))
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "oxi-1"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuing, key.Public(), issuingKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	cas, err := loadCAs(dir)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := cas.chain(leaf, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	deviceCA, _ := pki.LoadCert(filepath.Join(dir, pki.FileDeviceCA))
	if len(chain) != 3 || !chain[0].Equal(leaf) || !chain[1].Equal(issuing) || !chain[2].Equal(deviceCA) {
		t.Fatalf("chain of %d certificates, want leaf, issuing CA, device CA", len(chain))
	}
	self, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := x509.ParseCertificate(self)
	if _, err := cas.chain(forged, time.Now()); err == nil {
		t.Error("a self-signed certificate got a chain")
	}
}

// TestFingerprintFile: a line that does not parse is dropped (its device
// is published again), the others are kept.
func TestFingerprintFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), File)
	good := "oxi-1 ab" + strings.Repeat("0", 62)
	if err := os.WriteFile(path, []byte(header+good+"\n../x 00\nnot a line at all\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := load(path, 10, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got["oxi-1"][0] != 0xab {
		t.Fatalf("loaded %v", got)
	}
}
