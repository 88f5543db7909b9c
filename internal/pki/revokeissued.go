package pki

import (
	"crypto/x509"
	"fmt"
	"path/filepath"
	"time"
)

// revokeIssued adds the certificates of the bundle at path (issued/ID.pem) that the issuing CA signed to
// issuing-crl.pem, and returns how many the bundle holds. A bundle with none is an error. The caller holds the
// directory's writer lock.
func revokeIssued(dir, id, path string) (int, error) {
	ca, err := loadIssuer(filepath.Join(dir, FileIssuingCA), filepath.Join(dir, FileIssuingCAKey))
	if err != nil {
		return 0, fmt.Errorf("issuing CA: %w", err)
	}
	bundle, err := readCerts(path)
	if err != nil {
		return 0, err
	}
	var certs []*x509.Certificate
	for _, c := range bundle {
		if c.CheckSignatureFrom(ca.cert) == nil {
			certs = append(certs, c)
		}
	}
	if len(certs) == 0 {
		return 0, fmt.Errorf("device %s: %s holds no certificate signed by the issuing CA (%d certificates)", id, path, len(bundle))
	}
	if err := revokeInCRL(filepath.Join(dir, FileIssuingCRL), ca, certs, time.Now()); err != nil {
		return 0, err
	}
	return len(certs), nil
}
