package pki

import (
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// RenewIssuing re-signs the gateway's issuing CA (issuing-ca.crt) with the device CA for days days (0: 90): the
// same subject, key and key identifier, a new serial number and validity, so every operational certificate it
// signed stays valid under the renewed certificate. It runs where device-ca.key lives; the new issuing-ca.crt is
// then copied to the gateway, which reloads it. It returns the renewed certificate.
func RenewIssuing(dir string, days int) (*x509.Certificate, error) {
	v, err := validity(days)
	if err != nil {
		return nil, err
	}
	if v == 0 {
		v = IssuingCAValidity
	}
	devKey := filepath.Join(dir, FileDeviceCAKey)
	if _, err := os.Stat(devKey); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no device CA key %s: renew the issuing CA where the device CA's key lives, then copy %s to the gateway", devKey, FileIssuingCA)
	}
	devCA, err := loadIssuer(filepath.Join(dir, FileDeviceCA), devKey)
	if err != nil {
		return nil, fmt.Errorf("device CA: %w", err)
	}
	certFile := filepath.Join(dir, FileIssuingCA)
	old, err := LoadCert(certFile)
	if err != nil {
		return nil, fmt.Errorf("issuing CA: %w", err)
	}
	if err := old.CheckSignatureFrom(devCA.cert); err != nil {
		return nil, fmt.Errorf("issuing CA %s: not issued by the device CA %s: %w", certFile, FileDeviceCA, err)
	}
	// Only the key pair is needed on this side, not the issuing CA's private key: the template carries the public
	// key of the old certificate.
	now := time.Now()
	t, err := Profiles.IssuingCA.Template(Request{CommonName: old.Subject.CommonName, Validity: v}, now)
	if err != nil {
		return nil, err
	}
	t.Subject, t.RawSubject, t.SubjectKeyId = old.Subject, old.RawSubject, old.SubjectKeyId
	if t.NotAfter.After(devCA.cert.NotAfter) { // never outlive the device CA
		t.NotAfter = devCA.cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, t, devCA.cert, old.PublicKey, devCA.key)
	if err != nil {
		return nil, fmt.Errorf("sign issuing CA: %w", err)
	}
	renewed, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse issuing CA: %w", err)
	}
	if err := writeFile(certFile, encodeCert(der), 0o644, true); err != nil {
		return nil, err
	}
	return renewed, nil
}
