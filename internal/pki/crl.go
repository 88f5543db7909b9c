package pki

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vitalgate/vitalgate/internal/fileerr"
)

// CRLValidity is the interval between a CRL's thisUpdate and nextUpdate. The gateway does not refuse a CRL past its
// nextUpdate (failing closed would lock every device out); the field is for other readers such as openssl.
const CRLValidity = 365 * 24 * time.Hour

// maxCRLSize bounds how much of a CRL file is read.
const maxCRLSize = 64 << 20

// signCRL returns a PEM CRL of the device CA listing entries, with CRL number number (nil: 1).
func signCRL(ca *issuer, entries []x509.RevocationListEntry, number *big.Int, now time.Time) ([]byte, error) {
	if number == nil {
		number = big.NewInt(1)
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    number,
		ThisUpdate:                now,
		NextUpdate:                now.Add(CRLValidity),
		RevokedCertificateEntries: entries,
	}, ca.cert, ca.key)
	if err != nil {
		return nil, fmt.Errorf("sign CRL: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), nil
}

// readCRL reads and parses a PEM (or DER) CRL file and, when issuer is not nil, checks its signature.
func readCRL(path string, issuer *x509.Certificate) (*x509.RevocationList, os.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fileerr.Wrap("read CRL", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, fileerr.Wrap("read CRL", path, err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxCRLSize+1))
	if err != nil {
		return nil, nil, fileerr.Wrap("read CRL", path, err)
	}
	if len(data) > maxCRLSize {
		return nil, nil, fmt.Errorf("%s: CRL larger than %d bytes", path, maxCRLSize)
	}
	der := data
	if b, _ := pem.Decode(data); b != nil {
		if b.Type != "X509 CRL" {
			return nil, nil, fmt.Errorf("%s: PEM block %q, want X509 CRL", path, b.Type)
		}
		der = b.Bytes
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: parse CRL: %w", path, err)
	}
	if issuer != nil {
		if err := crl.CheckSignatureFrom(issuer); err != nil {
			return nil, nil, fmt.Errorf("%s: CRL not signed by %s: %w", path, issuer.Subject.CommonName, err)
		}
	}
	return crl, fi, nil
}

// Revoke revokes device id: see [RevokeDevice].
func Revoke(dir, id string) error {
	_, err := RevokeDevice(dir, id)
	return err
}

// Revoked reports what [RevokeDevice] put on the revocation lists.
type Revoked struct {
	DeviceCert bool // devices/ID.crt, on crl.pem
	Issued     int  // certificates of issued/ID.pem, on issuing-crl.pem
}

// RevokeDevice revokes every certificate of device id that the PKI directory knows: devices/ID.crt goes on
// crl.pem (re-signed by the device CA), and each certificate of issued/ID.pem (the operational certificates the
// gateway's issuing CA signed at enrolment) on issuing-crl.pem (re-signed by the issuing CA), each list with its
// next CRL number. It holds the directory's writer lock ([LockDir]) and replaces each file atomically. It fails
// when the device has neither file; revoking a device twice is not an error (the lists are unchanged).
func RevokeDevice(dir, id string) (Revoked, error) {
	if !ValidDeviceID(id) {
		return Revoked{}, fmt.Errorf("invalid device ID %q (want "+idSyntax+")", id)
	}
	certFile, _ := DevicePaths(dir, id)
	issued := filepath.Join(dir, IssuedDir, id+".pem")
	hasCert, hasIssued := exists(certFile), exists(issued)
	if !hasCert && !hasIssued {
		return Revoked{}, fmt.Errorf("device %s: no certificate %s and none issued at enrolment (%s)", id, certFile, issued)
	}
	release, err := LockDir(dir)
	if err != nil {
		return Revoked{}, err
	}
	defer release()
	var r Revoked
	if hasCert {
		if err := revokeDeviceCert(dir, id, certFile); err != nil {
			return r, err
		}
		r.DeviceCert = true
	}
	if hasIssued {
		if r.Issued, err = revokeIssued(dir, id, issued); err != nil {
			return r, err
		}
	}
	return r, nil
}

// revokeDeviceCert adds devices/ID.crt (certFile) to crl.pem.
func revokeDeviceCert(dir, id, certFile string) error {
	dev, err := LoadCert(certFile)
	if err != nil {
		return fmt.Errorf("device %s: %w", id, err)
	}
	ca, err := loadIssuer(filepath.Join(dir, FileDeviceCA), filepath.Join(dir, FileDeviceCAKey))
	if err != nil {
		return fmt.Errorf("device CA: %w", err)
	}
	if err := dev.CheckSignatureFrom(ca.cert); err != nil {
		return fmt.Errorf("device %s: certificate not issued by this device CA", id)
	}
	return revokeInCRL(filepath.Join(dir, FileCRL), ca, []*x509.Certificate{dev}, time.Now())
}

// revokeInCRL adds the serial numbers of certs to the CRL at path, which ca signs, and re-signs it with the next
// CRL number; a list that already holds them all is left as it is. A missing file is started at number 1; one
// that does not verify with ca is an error.
func revokeInCRL(path string, ca *issuer, certs []*x509.Certificate, now time.Time) error {
	old, _, err := readCRL(path, ca.cert)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		old = &x509.RevocationList{}
	case err != nil:
		return err
	}
	entries := make([]x509.RevocationListEntry, 0, len(old.RevokedCertificateEntries)+len(certs))
	for _, e := range old.RevokedCertificateEntries { // keep only the fields CreateRevocationList re-encodes
		entries = append(entries, x509.RevocationListEntry{SerialNumber: e.SerialNumber,
			RevocationTime: e.RevocationTime, ReasonCode: e.ReasonCode})
	}
	added := false
	for _, c := range certs {
		if !slices.ContainsFunc(entries, func(e x509.RevocationListEntry) bool { return e.SerialNumber.Cmp(c.SerialNumber) == 0 }) {
			entries = append(entries, x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: now})
			added = true
		}
	}
	if !added {
		return nil
	}
	number := big.NewInt(1)
	if old.Number != nil {
		number.Add(old.Number, big.NewInt(1))
	}
	b, err := signCRL(ca, entries, number, now)
	if err != nil {
		return err
	}
	return writeFile(path, b, 0o644, true)
}

// Revocations is the device revocation list the gateway checks at every handshake. It is loaded from a CRL whose
// signature is checked against the issuer (the device CA), and re-read on [Revocations.Reload] or, under
// [Revocations.Watch], when the file changes. A CRL that fails to load never replaces the current one.
// Its methods are safe for concurrent use.
type Revocations struct {
	path   string
	issuer *x509.Certificate

	reload sync.Mutex                 // serialises reloads
	cur    atomic.Pointer[revocState] // read lock-free at every handshake
	err    atomic.Pointer[error]      // the last reload error, nil after a success
}

// revocState is one loaded CRL.
type revocState struct {
	serials map[string]struct{} // big-endian serial bytes
	number  *big.Int
	fi      os.FileInfo
}

// NewRevocations loads the CRL at crlPath and checks its signature against issuer.
func NewRevocations(crlPath string, issuer *x509.Certificate) (*Revocations, error) {
	if issuer == nil {
		return nil, errors.New("revocations: no issuer certificate")
	}
	r := &Revocations{path: crlPath, issuer: issuer}
	if err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Reload re-reads the CRL file. On failure the previous list stays in force and the error is returned (and kept
// for [Revocations.Err]).
func (r *Revocations) Reload() error {
	r.reload.Lock()
	defer r.reload.Unlock()
	crl, fi, err := readCRL(r.path, r.issuer)
	if err != nil {
		r.err.Store(&err)
		return err
	}
	st := &revocState{serials: make(map[string]struct{}, len(crl.RevokedCertificateEntries)), number: crl.Number, fi: fi}
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber != nil {
			st.serials[string(e.SerialNumber.Bytes())] = struct{}{}
		}
	}
	r.cur.Store(st)
	r.err.Store(nil)
	return nil
}

// Err returns the error of the last reload, or nil when it succeeded.
func (r *Revocations) Err() error {
	if p := r.err.Load(); p != nil {
		return *p
	}
	return nil
}

// Len returns the number of revoked serial numbers in force.
func (r *Revocations) Len() int { return len(r.cur.Load().serials) }

// Number returns the CRL number of the list in force (nil if the CRL has none).
func (r *Revocations) Number() *big.Int { return r.cur.Load().number }

// IsRevoked reports whether serial is on the list in force.
func (r *Revocations) IsRevoked(serial *big.Int) bool {
	if serial == nil {
		return false
	}
	_, ok := r.cur.Load().serials[string(serial.Bytes())]
	return ok
}

// changed reports whether the CRL file differs (identity, modification time or size) from the one in force.
func (r *Revocations) changed() bool {
	fi, err := os.Stat(r.path)
	if err != nil {
		return true // let Reload report it
	}
	old := r.cur.Load().fi
	return !os.SameFile(fi, old) || !fi.ModTime().Equal(old.ModTime()) || fi.Size() != old.Size()
}

// Watch polls the CRL file every interval (0: 2 s) and reloads it when its identity, modification time or size
// changes, until ctx is done. Reload errors keep the previous list and are available from [Revocations.Err];
// a failed file is retried at every poll.
func (r *Revocations) Watch(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = 2 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if r.changed() || r.Err() != nil {
				_ = r.Reload() // kept in r.err
			}
		}
	}
}
