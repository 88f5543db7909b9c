package pki

import (
	"bytes"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// issueOperational has the issuing CA of dir sign an operational certificate for id, as the gateway does at
// enrolment.
func issueOperational(t *testing.T, dir, id string) *x509.Certificate {
	t.Helper()
	iss, err := loadIssuer(filepath.Join(dir, FileIssuingCA), filepath.Join(dir, FileIssuingCAKey))
	if err != nil {
		t.Fatal(err)
	}
	key, err := generateKey(P256)
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := iss.sign(Profiles.Device, Request{CommonName: id, Validity: OperationalValidity}, key.Public(), nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRenewIssuing renews the issuing CA and checks that what it signed before still verifies under the renewed
// certificate, which chains to the device CA and the root, with a new serial and validity and the same key.
func TestRenewIssuing(t *testing.T) {
	dir := newPKI(t, InitOptions{})
	old := mustCert(t, filepath.Join(dir, FileIssuingCA))
	leaf := issueOperational(t, dir, "pump-1")
	renewed, err := RenewIssuing(dir, 10)
	if err != nil {
		t.Fatal(err)
	}
	if onDisk := mustCert(t, filepath.Join(dir, FileIssuingCA)); !onDisk.Equal(renewed) {
		t.Fatal("issuing-ca.crt is not the renewed certificate")
	}
	if renewed.SerialNumber.Cmp(old.SerialNumber) == 0 {
		t.Error("renewal kept the serial number")
	}
	if d := time.Until(renewed.NotAfter); d < 10*24*time.Hour-time.Hour || d > 10*24*time.Hour {
		t.Errorf("renewed for %v, want 10 days", d)
	}
	if !bytes.Equal(renewed.RawSubject, old.RawSubject) || !bytes.Equal(renewed.SubjectKeyId, old.SubjectKeyId) ||
		!bytes.Equal(renewed.RawSubjectPublicKeyInfo, old.RawSubjectPublicKeyInfo) {
		t.Error("renewal changed the subject, key or key identifier")
	}
	if !renewed.IsCA || !renewed.MaxPathLenZero {
		t.Error("renewed certificate lost its CA constraints")
	}
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	devCA := mustCert(t, filepath.Join(dir, FileDeviceCA))
	for _, root := range []string{FileDeviceCA, FileCA} {
		inter := x509.NewCertPool()
		inter.AddCert(renewed)
		inter.AddCert(devCA)
		opts := x509.VerifyOptions{Roots: mustPool(t, filepath.Join(dir, root)), Intermediates: inter, KeyUsages: client}
		if _, err := renewed.Verify(opts); err != nil {
			t.Errorf("renewed issuing CA against %s: %v", root, err)
		}
		if _, err := leaf.Verify(opts); err != nil {
			t.Errorf("certificate of the old issuing CA under the renewed one, against %s: %v", root, err)
		}
	}
	// The leaf against the renewed certificate alone as the trust anchor.
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: mustPool(t, filepath.Join(dir, FileIssuingCA)), KeyUsages: client}); err != nil {
		t.Errorf("leaf against the renewed issuing CA: %v", err)
	}
	// The renewed pair still signs: the gateway keeps its key.
	if _, err := loadIssuer(filepath.Join(dir, FileIssuingCA), filepath.Join(dir, FileIssuingCAKey)); err != nil {
		t.Errorf("renewed certificate and the kept key: %v", err)
	}

	// Without the device CA's key (on the gateway) it refuses and leaves the file alone.
	before, _ := os.ReadFile(filepath.Join(dir, FileIssuingCA))
	if err := os.Remove(filepath.Join(dir, FileDeviceCAKey)); err != nil {
		t.Fatal(err)
	}
	_, err = RenewIssuing(dir, 0)
	if err == nil || !strings.Contains(err.Error(), "where the device CA's key lives") {
		t.Fatalf("renewal without device-ca.key: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, FileIssuingCA)); !bytes.Equal(before, after) {
		t.Error("a refused renewal changed issuing-ca.crt")
	}
	if _, err := RenewIssuing(newPKI(t, InitOptions{}), -1); err == nil {
		t.Error("negative days accepted")
	}
}

// TestRevokeEnrolled revokes a device known only by the certificates the issuing CA signed for it (issued/ID.pem)
// and a device with both kinds, and checks the lists with NewRevocations and with openssl.
func TestRevokeEnrolled(t *testing.T) {
	dir := newPKI(t, InitOptions{})
	if err := os.MkdirAll(filepath.Join(dir, IssuedDir), 0o755); err != nil {
		t.Fatal(err)
	}
	older, newer, other := issueOperational(t, dir, "pump-1"), issueOperational(t, dir, "pump-1"), issueOperational(t, dir, "pump-2")
	if err := IssueDevice(dir, "pump-2", P256, 0); err != nil {
		t.Fatal(err)
	}
	stray, _ := DevicePaths(dir, "pump-2") // signed by the device CA: not the issuing CA's to revoke
	writeBundle := func(id string, certs ...*x509.Certificate) {
		var b []byte
		for _, c := range certs {
			b = append(b, encodeCert(c.Raw)...)
		}
		if err := os.WriteFile(filepath.Join(dir, IssuedDir, id+".pem"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeBundle("pump-1", newer, older, mustCert(t, stray))
	writeBundle("pump-2", other)
	issuing := mustCert(t, filepath.Join(dir, FileIssuingCA))
	rev, err := NewRevocations(filepath.Join(dir, FileIssuingCRL), issuing)
	if err != nil {
		t.Fatal(err)
	}

	r, err := RevokeDevice(dir, "pump-1")
	if err != nil || r != (Revoked{Issued: 2}) {
		t.Fatalf("RevokeDevice(pump-1) = %+v, %v", r, err)
	}
	if err := rev.Reload(); err != nil {
		t.Fatal(err)
	}
	if !rev.IsRevoked(older.SerialNumber) || !rev.IsRevoked(newer.SerialNumber) || rev.IsRevoked(other.SerialNumber) ||
		rev.Len() != 2 || rev.Number().Int64() != 2 {
		t.Fatalf("issuing CRL: len %d number %v", rev.Len(), rev.Number())
	}
	if r, err := RevokeDevice(dir, "pump-1"); err != nil || r.Issued != 2 {
		t.Fatalf("again: %+v, %v", r, err)
	}
	if rev.Reload(); rev.Number().Int64() != 2 {
		t.Errorf("revoking twice re-signed the list: number %v", rev.Number())
	}
	// pump-2 has both: devices/pump-2.crt goes on crl.pem, its operational certificate on issuing-crl.pem.
	if r, err := RevokeDevice(dir, "pump-2"); err != nil || r != (Revoked{DeviceCert: true, Issued: 1}) {
		t.Fatalf("RevokeDevice(pump-2) = %+v, %v", r, err)
	}
	devRev, err := NewRevocations(filepath.Join(dir, FileCRL), mustCert(t, filepath.Join(dir, FileDeviceCA)))
	if err != nil || !devRev.IsRevoked(mustCert(t, stray).SerialNumber) {
		t.Fatalf("device CRL after pump-2: %v", err)
	}
	if rev.Reload(); !rev.IsRevoked(other.SerialNumber) || rev.Number().Int64() != 3 {
		t.Error("pump-2's operational certificate is not on the issuing CRL")
	}

	// Failures: no certificate at all, a bundle of foreign certificates, an invalid ID.
	_, err = RevokeDevice(dir, "ghost")
	if err == nil || !strings.Contains(err.Error(), "none issued at enrolment") {
		t.Errorf("unknown device: %v", err)
	}
	writeBundle("foreign", mustCert(t, stray))
	if _, err := RevokeDevice(dir, "foreign"); err == nil || !strings.Contains(err.Error(), "no certificate signed by the issuing CA") {
		t.Errorf("foreign bundle: %v", err)
	}
	if _, err := RevokeDevice(dir, "../x"); err == nil {
		t.Error("invalid ID accepted")
	}

	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not on PATH")
	}
	// An independent check: openssl verifies the list's signature and finds the revoked certificate on it.
	if err := os.WriteFile(filepath.Join(dir, "older.pem"), encodeCert(older.Raw), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "chain.pem"), append(encodeCert(mustCert(t, filepath.Join(dir, FileDeviceCA)).Raw), encodeCert(issuing.Raw)...), 0o644); err != nil {
		t.Fatal(err)
	}
	openssl := func(args ...string) (string, error) {
		cmd := exec.Command("openssl", args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := openssl("crl", "-in", FileIssuingCRL, "-CAfile", FileIssuingCA, "-noout"); err != nil || !strings.Contains(out, "verify OK") {
		t.Errorf("openssl crl: %v\n%s", err, out)
	}
	out, err := openssl("verify", "-crl_check", "-CRLfile", FileIssuingCRL, "-CAfile", FileCA, "-untrusted", "chain.pem", "older.pem")
	if err == nil || !strings.Contains(out, "revoked") {
		t.Errorf("openssl accepted a revoked operational certificate: %v\n%s", err, out)
	}
	live := issueOperational(t, dir, "pump-3")
	if err := os.WriteFile(filepath.Join(dir, "live.pem"), encodeCert(live.Raw), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := openssl("verify", "-crl_check", "-CRLfile", FileIssuingCRL, "-CAfile", FileCA, "-untrusted", "chain.pem", "live.pem"); err != nil {
		t.Errorf("openssl refused a certificate that is not revoked: %v\n%s", err, out)
	}
}
