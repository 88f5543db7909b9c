package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestIssuingCAIssue checks an operational certificate: its subject, its lifetime, its chain through the issuing
// CA to the device CA, and the issued/ID.pem bundle (newest first, expired ones dropped).
func TestIssuingCAIssue(t *testing.T) {
	dir := newPKI(t, InitOptions{})
	ca, err := OpenIssuingCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	first, err := ca.Issue("dev-1", key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if first.Subject.CommonName != "dev-1" || len(first.Subject.Organization) != 1 || first.Subject.Organization[0] != Organization {
		t.Errorf("subject %v, want CN=dev-1, O=%s", first.Subject, Organization)
	}
	if life := first.NotAfter.Sub(first.NotBefore); life != time.Hour+backdate {
		t.Errorf("lifetime %v, want 1h (+%v backdate)", life, backdate)
	}
	roots := mustPool(t, filepath.Join(dir, FileDeviceCA))
	inter := mustPool(t, filepath.Join(dir, FileIssuingCA))
	if _, err := first.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("operational certificate does not chain to the device CA: %v", err)
	}
	// A certificate never outlives the issuing CA.
	long, err := ca.Issue("dev-1", key.Public(), 1000*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !long.NotAfter.Equal(ca.Cert().NotAfter) {
		t.Errorf("NotAfter %v outlives the issuing CA's %v", long.NotAfter, ca.Cert().NotAfter)
	}
	got, err := ReadIssued(dir, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].SerialNumber.Cmp(long.SerialNumber) != 0 || got[1].SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatalf("issued bundle has %d certificates, want the two, newest first", len(got))
	}
	if c, err := ca.Issue("dev-1", key.Public(), -time.Hour); err == nil {
		t.Fatalf("issued a certificate with a negative lifetime: %v", c.NotAfter)
	}
	// An expired certificate leaves the bundle at the next issue.
	expiredDER := issueExpired(t, dir, key)
	if err := os.WriteFile(IssuedPath(dir, "dev-2"), encodeCert(expiredDER), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Issue("dev-2", key.Public(), 0); err != nil {
		t.Fatal(err)
	}
	if got, _ := ReadIssued(dir, "dev-2"); len(got) != 1 || got[0].NotAfter.Sub(got[0].NotBefore) != OperationalValidity+backdate {
		t.Errorf("dev-2 bundle: %d certificates, want only the new one of %v", len(got), OperationalValidity)
	}
	if _, err := ca.Issue("../x", key.Public(), 0); err == nil {
		t.Error("issued a certificate for device ID ../x")
	}
}

// issueExpired returns a certificate of the issuing CA that expired an hour ago.
func issueExpired(t *testing.T, dir string, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	is, err := loadIssuer(filepath.Join(dir, FileIssuingCA), filepath.Join(dir, FileIssuingCAKey))
	if err != nil {
		t.Fatal(err)
	}
	_, der, err := is.sign(Profiles.Device, Request{CommonName: "dev-2", Validity: time.Hour}, key.Public(), nil, time.Now().Add(-2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestIssuingCAReload checks that a renewed issuing CA (files replaced) signs the next certificate.
func TestIssuingCAReload(t *testing.T) {
	dir := newPKI(t, InitOptions{})
	ca, err := OpenIssuingCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	old := ca.Cert()
	other := newPKI(t, InitOptions{})
	for _, f := range []string{FileIssuingCA, FileIssuingCAKey} {
		b, err := os.ReadFile(filepath.Join(other, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := writeFile(filepath.Join(dir, f), b, 0o600, false); err != nil {
			t.Fatal(err)
		}
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c, err := ca.Issue("dev-1", key.Public(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if c.CheckSignatureFrom(old) == nil || c.CheckSignatureFrom(ca.Cert()) != nil {
		t.Error("certificate not signed by the replaced issuing CA")
	}
}

// TestIssuingCRLRefresh checks that the issuing CRL is re-signed, keeping its entries, only once under half of
// its validity remains.
func TestIssuingCRLRefresh(t *testing.T) {
	dir := newPKI(t, InitOptions{})
	ca, err := OpenIssuingCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, FileIssuingCRL)
	crl, _, err := readCRL(path, ca.Cert())
	if err != nil {
		t.Fatal(err)
	}
	if v := crl.NextUpdate.Sub(crl.ThisUpdate); v != IssuingCRLValidity {
		t.Fatalf("certs init wrote an issuing CRL valid %v, want %v", v, IssuingCRLValidity)
	}
	// Put one revoked serial on it, signed 3 days ago: more than half is left.
	is, _ := ca.load()
	listed := &x509.RevocationList{Number: big.NewInt(4), RevokedCertificateEntries: []x509.RevocationListEntry{
		{SerialNumber: big.NewInt(77), RevocationTime: time.Now().Add(-time.Hour)}}}
	b, err := signIssuingCRL(is, listed, time.Now().Add(-3*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFile(path, b, 0o644, false); err != nil {
		t.Fatal(err)
	}
	if did, err := ca.RefreshCRL(time.Now()); err != nil || did {
		t.Fatalf("refreshed a CRL with over half its validity left: %v %v", did, err)
	}
	if did, err := ca.RefreshCRL(time.Now().Add(24 * time.Hour)); err != nil || !did {
		t.Fatalf("did not refresh a CRL with under half its validity left: %v %v", did, err)
	}
	crl, _, err = readCRL(path, ca.Cert())
	if err != nil {
		t.Fatal(err)
	}
	if crl.Number.Int64() != 6 || len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Int64() != 77 {
		t.Errorf("refreshed CRL: number %v, %d entries; want number 6 with serial 77", crl.Number, len(crl.RevokedCertificateEntries))
	}
}

// TestIssuingCACap checks that a device holding MaxIssuedPerDevice unexpired certificates gets no other.
func TestIssuingCACap(t *testing.T) {
	dir := newPKI(t, InitOptions{})
	ca, err := OpenIssuingCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for i := range MaxIssuedPerDevice {
		if _, err := ca.Issue("dev-1", key.Public(), time.Hour); err != nil {
			t.Fatalf("certificate %d: %v", i+1, err)
		}
	}
	if _, err := ca.Issue("dev-1", key.Public(), time.Hour); !errors.Is(err, ErrTooManyIssued) {
		t.Fatalf("certificate %d: %v, want ErrTooManyIssued", MaxIssuedPerDevice+1, err)
	}
	if got, _ := ReadIssued(dir, "dev-1"); len(got) != MaxIssuedPerDevice {
		t.Errorf("bundle holds %d certificates, want %d", len(got), MaxIssuedPerDevice)
	}
}
