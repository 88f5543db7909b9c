package cloud

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// revList is a CA's revocation list, reloaded on change.
type revList struct {
	ca  *x509.Certificate
	rev *pki.Revocations
}

// revokedError says which list revokes a device certificate.
type revokedError struct {
	serial string
	ca     string
}

func (e *revokedError) Error() string {
	return fmt.Sprintf("serial %s is on the revocation list of %s", e.serial, e.ca)
}

// loadRevocations loads crl.pem of the device CA and, when the PKI
// directory dir has an issuing CA, issuing-crl.pem, with the issuing CA as an
// intermediate for devices/{id}.crt.
func (w *Watcher) loadRevocations(dir string) error {
	if err := w.addList(filepath.Join(dir, pki.FileDeviceCA), filepath.Join(dir, pki.FileCRL)); err != nil {
		return err
	}
	issFile := filepath.Join(dir, pki.FileIssuingCA)
	if _, err := os.Stat(issFile); err != nil {
		return nil
	}
	var err error
	if w.issuing, err = pki.LoadPool(issFile); err != nil {
		return fmt.Errorf("load issuing CA: %w", err)
	}
	return w.addList(issFile, filepath.Join(dir, pki.FileIssuingCRL))
}

// addList loads the revocation list crlFile of the CA in caFile.
func (w *Watcher) addList(caFile, crlFile string) error {
	ca, err := pki.LoadCert(caFile)
	if err != nil {
		return err
	}
	rev, err := pki.NewRevocations(crlFile, ca)
	if err != nil {
		return fmt.Errorf("device revocation list: %w", err)
	}
	w.lists = append(w.lists, &revList{ca: ca, rev: rev})
	return nil
}

// WatchRevocations reloads the revocation lists when their files change
// (polled every second) until ctx is done; a list that fails to load keeps
// the previous one. A watcher without a PKI directory has none.
func (w *Watcher) WatchRevocations(ctx context.Context) {
	for _, l := range w.lists {
		go l.rev.Watch(ctx, time.Second)
	}
}

// revoked returns a [revokedError] when a list of an issuer of cert
// revokes it.
func (w *Watcher) revoked(cert *x509.Certificate) error {
	for _, l := range w.lists {
		if l.rev.IsRevoked(cert.SerialNumber) && cert.CheckSignatureFrom(l.ca) == nil {
			return &revokedError{serial: fmt.Sprintf("%x", cert.SerialNumber), ca: l.ca.Subject.CommonName}
		}
	}
	return nil
}
