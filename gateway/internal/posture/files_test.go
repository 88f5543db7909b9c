package posture

import (
	"crypto/rand"
	"crypto/rsa"
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
)

// newPKI is a fresh PKI directory as certs init writes it.
func newPKI(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{Site: "s1", GatewayID: "gw1"}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// findings of the check named check in fs.
func only(fs []Finding, check string) []Finding {
	var out []Finding
	for _, f := range fs {
		if f.Check == check {
			out = append(out, f)
		}
	}
	return out
}

// signCRL writes crl.pem signed by the device CA with the given update times.
func signCRL(t *testing.T, dir string, this, next time.Time) {
	t.Helper()
	ca, err := pki.LoadCert(filepath.Join(dir, pki.FileDeviceCA))
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.LoadKey(filepath.Join(dir, pki.FileDeviceCAKey))
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(7), ThisUpdate: this, NextUpdate: next}, ca, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, pki.FileCRL), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A fresh PKI has nothing to report; each condition built for real gives
// its finding: a device certificate expiring in 3 days, a CRL past its next
// update and one near it, an RSA device key, a corrupt CRL.
func TestCheckPKI(t *testing.T) {
	dir := newPKI(t)
	if err := pki.IssueDevice(dir, "fine", pki.P256, 0); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if _, fs := CheckPKI(dir, now, Policy{}); len(fs) != 0 {
		t.Fatalf("fresh PKI: %+v", fs)
	}
	if err := pki.IssueDevice(dir, "soon", pki.Ed25519, 3); err != nil {
		t.Fatal(err)
	}
	signCRL(t, dir, now.Add(-48*time.Hour), now.Add(-time.Hour))
	writeRSADevice(t, dir, "legacy")
	_, fs := CheckPKI(dir, now, Policy{})
	if got := only(fs, CheckDeviceCert); len(got) != 1 || got[0].Subject != "soon" || got[0].Severity != High || !got[0].dev ||
		!strings.Contains(got[0].Detail, "devices/soon.crt") || !strings.Contains(got[0].Detail, "days left") {
		t.Errorf("expiring device certificate: %+v", got)
	}
	if got := only(fs, CheckCRL); len(got) != 1 || got[0].Subject != pki.FileCRL || got[0].Severity != High ||
		!strings.Contains(got[0].Detail, "past its next update") {
		t.Errorf("stale CRL: %+v", got)
	}
	if got := only(fs, CheckKeyPolicy); len(got) != 1 || got[0].Subject != "devices/legacy.crt" || !strings.Contains(got[0].Detail, "RSA") {
		t.Errorf("RSA device key: %+v", got)
	}
	// Near its next update: under a quarter of its period (8 days: 2 days) left.
	signCRL(t, dir, now.Add(-7*24*time.Hour), now.Add(24*time.Hour))
	if _, fs = CheckPKI(dir, now, Policy{}); len(only(fs, CheckCRL)) != 1 || only(fs, CheckCRL)[0].Severity != Medium {
		t.Errorf("CRL near its next update: %+v", only(fs, CheckCRL))
	}
	os.WriteFile(filepath.Join(dir, pki.FileIssuingCRL), []byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"), 0o644)
	if _, fs = CheckPKI(dir, now, Policy{}); len(only(fs, CheckCRL)) != 2 {
		t.Errorf("corrupt issuing CRL: %+v", only(fs, CheckCRL))
	}
}

// A gateway host holds only part of the PKI (docs/security.md: no CA keys
// but the issuing CA's, and without an embedded broker no gateway CA or
// its list): the files it does not hold are no finding.
func TestCheckPKIGatewayHostFiles(t *testing.T) {
	dir := newPKI(t)
	for _, f := range []string{pki.FileGatewayCA, pki.FileGatewayCRL, pki.FileDeviceCAKey, pki.FileGatewayCAKey,
		pki.FileAppTokenKey} {
		if err := os.RemoveAll(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, pki.FileGatewayCA)); !os.IsNotExist(err) {
		t.Fatalf("gateway-ca.crt still there: %v", err)
	}
	if _, fs := CheckPKI(dir, time.Now(), Policy{}); len(fs) != 0 {
		t.Errorf("a gateway host's PKI: %+v", fs)
	}
}

// CA certificates are judged against 90 days, or a third of their lifetime
// when shorter: the 90-day issuing CA warns with 30 days left, the ten-year
// CAs with 90; an expired one is critical.
func TestCheckPKICAs(t *testing.T) {
	dir := newPKI(t)
	now := time.Now()
	_, fs := CheckPKI(dir, now.Add(61*24*time.Hour), Policy{})
	if got := only(fs, CheckCACert); len(got) != 1 || got[0].Subject != pki.FileIssuingCA || got[0].Severity != High {
		t.Errorf("issuing CA with 29 days left: %+v", got)
	}
	_, fs = CheckPKI(dir, now.Add(59*24*time.Hour), Policy{})
	if got := only(fs, CheckCACert); len(got) != 0 {
		t.Errorf("issuing CA with 31 days left: %+v", got)
	}
	_, fs = CheckPKI(dir, now.Add((10*365-80)*24*time.Hour), Policy{})
	crit := 0
	for _, f := range only(fs, CheckCACert) {
		if f.Subject == pki.FileDeviceCA && f.Severity != High {
			t.Errorf("device CA with 80 days left: %+v", f)
		}
		if f.Subject == pki.FileIssuingCA && f.Severity == Critical {
			crit++
		}
	}
	if crit != 1 || len(only(fs, CheckCACert)) < 4 {
		t.Errorf("ten years on: %+v", only(fs, CheckCACert))
	}
}

// writeRSADevice writes devices/ID.crt with an RSA key, signed by the
// device CA: a certificate outside the key policy.
func writeRSADevice(t *testing.T, dir, id string) {
	t.Helper()
	ca, err := pki.LoadCert(filepath.Join(dir, pki.FileDeviceCA))
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := pki.LoadKey(filepath.Join(dir, pki.FileDeviceCAKey))
	if err != nil {
		t.Fatal(err)
	}
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: id},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, pki.DevicesDir, id+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}
