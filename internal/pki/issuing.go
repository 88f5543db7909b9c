package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/vitalgate/vitalgate/internal/fileerr"
)

// IssuingCRLValidity is the interval between thisUpdate and nextUpdate of the issuing CA's revocation list. The
// gateway re-signs the list (same entries, next number) when under half of it remains, see
// [IssuingCA.RefreshCRL].
const IssuingCRLValidity = 7 * 24 * time.Hour

// MaxIssuedPerDevice is how many unexpired certificates one device may hold: [IssuingCA.Issue] refuses another
// (wrapping [ErrTooManyIssued]), so a device re-enrolling in a loop cannot grow its bundle without bound, and
// every certificate it holds stays in the bundle that revocation reads.
const MaxIssuedPerDevice = 32

// ErrTooManyIssued is returned (wrapped) by [IssuingCA.Issue] when the device holds [MaxIssuedPerDevice]
// unexpired certificates.
var ErrTooManyIssued = errors.New("too many unexpired certificates")

// ErrRevoked is returned (wrapped) by [IssuingCA.Reissue] when the certificate a device renews with is on
// issuing-crl.pem or crl.pem as the directory holds them.
var ErrRevoked = errors.New("certificate revoked")

// IssuingCA is the gateway's online issuing CA (issuing-ca.crt and .key of a PKI directory). It signs the
// operational certificates of enrolled devices, records them under [IssuedDir], and keeps its revocation list
// fresh. The pair is re-read when either file changes (a renewal by certs replaces it); a pair that fails to
// load never replaces the one in use. Its methods are safe for concurrent use.
type IssuingCA struct {
	dir string

	mu            sync.Mutex
	cur           *issuer
	certFI, keyFI os.FileInfo
}

// OpenIssuingCA loads the issuing CA of the PKI directory dir.
func OpenIssuingCA(dir string) (*IssuingCA, error) {
	ca := &IssuingCA{dir: dir}
	if _, err := ca.load(); err != nil {
		return nil, err
	}
	return ca, nil
}

// load returns the current pair, re-reading it when its files changed.
func (ca *IssuingCA) load() (*issuer, error) {
	certFile, keyFile := filepath.Join(ca.dir, FileIssuingCA), filepath.Join(ca.dir, FileIssuingCAKey)
	cfi, cerr := os.Stat(certFile)
	kfi, kerr := os.Stat(keyFile)
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if ca.cur != nil && (cerr != nil || kerr != nil || (same(cfi, ca.certFI) && same(kfi, ca.keyFI))) {
		return ca.cur, nil // unchanged, or being replaced: keep the loaded pair
	}
	is, err := loadIssuer(certFile, keyFile)
	if err != nil {
		if ca.cur != nil {
			return ca.cur, nil
		}
		return nil, fmt.Errorf("issuing CA: %w", err)
	}
	ca.cur, ca.certFI, ca.keyFI = is, cfi, kfi
	return is, nil
}

// Cert returns the issuing CA's current certificate.
func (ca *IssuingCA) Cert() *x509.Certificate {
	is, _ := ca.load() // never fails once opened
	return is.cert
}

// Issue signs an operational certificate (profile Device, CN = id, O = VitalGate) for pub, valid for validity
// (0: [OperationalValidity]) and never beyond the issuing CA, and records it first in issued/ID.pem, dropping
// the expired certificates of the bundle. The record is written under [LockDir], atomically.
func (ca *IssuingCA) Issue(id string, pub crypto.PublicKey, validity time.Duration) (*x509.Certificate, error) {
	return ca.issue(id, pub, validity, nil)
}

// Reissue is [IssuingCA.Issue] for a renewal authenticated with prev (CN = the device ID). Under the directory's
// lock, which [RevokeDevice] holds too, it refuses (wrapping [ErrRevoked]) when prev is on issuing-crl.pem or
// crl.pem as written on disk: a renewal racing a revocation that the gateway has not reloaded yet is either
// refused, or records its certificate in the bundle before the revocation reads it.
func (ca *IssuingCA) Reissue(prev *x509.Certificate, pub crypto.PublicKey, validity time.Duration) (*x509.Certificate, error) {
	return ca.issue(prev.Subject.CommonName, pub, validity, prev)
}

// issue is Issue, checking prev (when not nil) against the revocation lists on disk under the lock.
func (ca *IssuingCA) issue(id string, pub crypto.PublicKey, validity time.Duration, prev *x509.Certificate) (*x509.Certificate, error) {
	if !ValidDeviceID(id) {
		return nil, fmt.Errorf("invalid device ID %q (want "+idSyntax+")", id)
	}
	if validity == 0 {
		validity = OperationalValidity
	}
	is, err := ca.load()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if now.After(is.cert.NotAfter) {
		return nil, fmt.Errorf("issuing CA expired %s: renew it with certs", is.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	cert, der, err := is.sign(Profiles.Device, Request{CommonName: id, Validity: validity}, pub, nil, now)
	if err != nil {
		return nil, err
	}
	var check func() error
	if prev != nil {
		check = func() error { return revokedOnDisk(ca.dir, is.cert, prev) }
	}
	if err := recordIssued(ca.dir, id, der, now, check); err != nil {
		return nil, err
	}
	return cert, nil
}

// revokedOnDisk returns an error wrapping [ErrRevoked] when c is on issuing-crl.pem (signed by issuing) or on
// crl.pem (signed by the device CA) of dir; a list that is missing revokes nothing, one that does not load is
// an error.
func revokedOnDisk(dir string, issuing, c *x509.Certificate) error {
	devCA, err := LoadCert(filepath.Join(dir, FileDeviceCA))
	if err != nil {
		return fmt.Errorf("device CA: %w", err)
	}
	for _, l := range []struct {
		file   string
		issuer *x509.Certificate
	}{{FileIssuingCRL, issuing}, {FileCRL, devCA}} {
		path := filepath.Join(dir, l.file)
		crl, _, err := readCRL(path, l.issuer)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(c.SerialNumber) == 0 {
				return fmt.Errorf("serial %x is on %s: %w", c.SerialNumber, path, ErrRevoked)
			}
		}
	}
	return nil
}

// IssuedPath returns the path of the bundle of certificates the issuing CA signed for device id.
func IssuedPath(dir, id string) string { return filepath.Join(dir, IssuedDir, id+".pem") }

// recordIssued puts der first in issued/ID.pem and drops the bundle's certificates expired at now. check, when
// not nil, runs first under the lock, and its error leaves the bundle unchanged.
func recordIssued(dir, id string, der []byte, now time.Time, check func() error) error {
	if err := os.MkdirAll(filepath.Join(dir, IssuedDir), 0o755); err != nil {
		return fileerr.Wrap("create issued directory", filepath.Join(dir, IssuedDir), err)
	}
	release, err := LockDir(dir)
	if err != nil {
		return err
	}
	defer release()
	if check != nil {
		if err := check(); err != nil {
			return err
		}
	}
	path := IssuedPath(dir, id)
	old, err := readIssued(path)
	if err != nil {
		return err
	}
	out, kept := encodeCert(der), 0
	for _, c := range old {
		if now.Before(c.NotAfter) {
			out = append(out, encodeCert(c.Raw)...)
			kept++
		}
	}
	if kept >= MaxIssuedPerDevice {
		return fmt.Errorf("device %s holds %d unexpired certificates (%s): revoke them or let them expire: %w", id, kept, path, ErrTooManyIssued)
	}
	return writeFile(path, out, 0o644, true)
}

// ReadIssued returns the certificates of issued/ID.pem, newest first; none when the device has no bundle.
func ReadIssued(dir, id string) ([]*x509.Certificate, error) {
	return readIssued(IssuedPath(dir, id))
}

// readIssued parses the bundle at path; a missing file is an empty bundle.
func readIssued(path string) ([]*x509.Certificate, error) {
	certs, err := readCerts(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return certs, err
}

// RefreshCRL re-signs issuing-crl.pem (same entries, next CRL number, nextUpdate [IssuingCRLValidity] ahead)
// when under half of its validity remains at now, under [LockDir]. It reports whether it did.
func (ca *IssuingCA) RefreshCRL(now time.Time) (bool, error) {
	is, err := ca.load()
	if err != nil {
		return false, err
	}
	path := filepath.Join(ca.dir, FileIssuingCRL)
	if fresh, err := crlFresh(path, is.cert, now); err != nil || fresh {
		return false, err
	}
	release, err := LockDir(ca.dir)
	if err != nil {
		return false, err
	}
	defer release()
	old, _, err := readCRL(path, is.cert) // again under the lock: a revocation may have replaced it
	if err != nil {
		return false, err
	}
	if halfLeft(old, now) {
		return false, nil
	}
	b, err := signIssuingCRL(is, old, now)
	if err != nil {
		return false, err
	}
	return true, writeFile(path, b, 0o644, true)
}

// crlFresh reports whether the CRL at path has at least half of its validity left at now.
func crlFresh(path string, issuer *x509.Certificate, now time.Time) (bool, error) {
	crl, _, err := readCRL(path, issuer)
	if err != nil {
		return false, err
	}
	return halfLeft(crl, now), nil
}

// halfLeft reports whether at least half of crl's thisUpdate..nextUpdate remains at now.
func halfLeft(crl *x509.RevocationList, now time.Time) bool {
	if crl.NextUpdate.IsZero() {
		return false
	}
	return crl.NextUpdate.Sub(now) >= crl.NextUpdate.Sub(crl.ThisUpdate)/2
}

// signIssuingCRL returns old re-signed by is at now: the same entries, the next number, nextUpdate
// [IssuingCRLValidity] ahead.
func signIssuingCRL(is *issuer, old *x509.RevocationList, now time.Time) ([]byte, error) {
	entries := make([]x509.RevocationListEntry, 0, len(old.RevokedCertificateEntries))
	for _, e := range old.RevokedCertificateEntries { // only the fields CreateRevocationList re-encodes
		entries = append(entries, x509.RevocationListEntry{SerialNumber: e.SerialNumber,
			RevocationTime: e.RevocationTime, ReasonCode: e.ReasonCode})
	}
	number := big.NewInt(1)
	if old.Number != nil {
		number.Add(old.Number, big.NewInt(1))
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: number, ThisUpdate: now, NextUpdate: now.Add(IssuingCRLValidity),
		RevokedCertificateEntries: slices.Clip(entries),
	}, is.cert, is.key)
	if err != nil {
		return nil, fmt.Errorf("sign issuing CRL: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), nil
}
