package est

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// TestReviewOtherManufacturerCannotClaimSerial: a second manufacturer (its CA trusted for its own devices) signs an
// identity whose subject serialNumber is acme's ACME-00000002: it must not enrol as acme's dev-00002.
func TestReviewOtherManufacturerCannotClaimSerial(t *testing.T) {
	e := newEstEnv(t, nil)
	if err := pki.NewManufacturer(e.pki, "globex", pki.P256); err != nil {
		t.Fatal(err)
	}
	gx, err := pki.LoadCert(filepath.Join(e.pki, pki.ManufacturersDir, "globex.crt"))
	if err != nil {
		t.Fatal(err)
	}
	gxKey, err := pki.LoadKey(filepath.Join(e.pki, pki.FactoryDir, "globex-ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	tpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "ACME-00000002", SerialNumber: "ACME-00000002"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tpl, gx, key.Public(), gxKey)
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := x509.ParseCertificate(der)
	status, body := e.post(e.certClient(forged, key), "simpleenroll", csr(t, newKey(t), "dev-00002"))
	if status == 200 {
		t.Fatalf("globex identity with acme's serial enrolled as dev-00002: %s", certsOf(t, body)[0].Subject.CommonName)
	}
}
