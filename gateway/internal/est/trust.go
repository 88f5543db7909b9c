package est

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// trust is what the routes verify client certificates against: the manufacturers (for factory identities)
// and the allow-list, both re-read when their files change, and the device CA with the issuing CA (for
// operational certificates).
type trust struct {
	dir      string
	ca       *pki.IssuingCA
	deviceCA *x509.Certificate
	log      *slog.Logger

	mu         sync.Mutex
	makers     *x509.CertPool
	makerStamp string
	allow      map[string]string // serial (subject serialNumber, or lowercase hex) -> device ID
	allowStamp string
}

func newTrust(dir string, ca *pki.IssuingCA, log *slog.Logger) (*trust, error) {
	dev, err := pki.LoadCert(filepath.Join(dir, pki.FileDeviceCA))
	if err != nil {
		return nil, fmt.Errorf("device CA: %w", err)
	}
	t := &trust{dir: dir, ca: ca, deviceCA: dev, log: log}
	if err := t.reload(true); err != nil {
		return nil, err
	}
	return t, nil
}

// reload re-reads manufacturers/*.crt and enroll.yaml when they changed since the last load. A file that fails
// to load keeps the previous state (logged), except at the first load, which returns the error.
func (t *trust) reload(first bool) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	mdir := filepath.Join(t.dir, pki.ManufacturersDir)
	if st, files := dirStamp(mdir); first || st != t.makerStamp {
		pool := x509.NewCertPool()
		var err error
		if len(files) > 0 {
			pool, err = pki.LoadPool(files...)
		}
		if err != nil && first {
			return fmt.Errorf("manufacturers: %w", err)
		}
		if err != nil {
			t.log.Error("reload manufacturers (keeping the previous ones)", "error", err)
		} else {
			t.makers, t.makerStamp = pool, st
		}
	}
	path := filepath.Join(t.dir, pki.FileEnroll)
	if st := fileStamp(path); first || st != t.allowStamp {
		entries, err := pki.ReadAllowList(path)
		if err != nil && first {
			return err
		}
		if err != nil {
			t.log.Error("reload enrolment allow-list (keeping the previous one)", "error", err)
			return nil
		}
		allow := make(map[string]string, len(entries))
		for _, e := range entries {
			allow[e.Serial] = e.ID
		}
		t.allow, t.allowStamp = allow, st
	}
	return nil
}

// fileStamp identifies the version of a file by its modification time and size; "" when it has none.
func fileStamp(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	return fmt.Sprint(fi.ModTime().UnixNano(), fi.Size())
}

// dirStamp identifies the set of *.crt files of dir and their versions, and lists them.
func dirStamp(dir string) (string, []string) {
	files, _ := filepath.Glob(filepath.Join(dir, "*.crt"))
	sort.Strings(files)
	var b strings.Builder
	for _, f := range files {
		fmt.Fprintf(&b, "%s %s;", filepath.Base(f), fileStamp(f))
	}
	return b.String(), files
}

// peer returns the client's leaf certificate and the other certificates it sent, as intermediates.
func peer(cs *tls.ConnectionState) (*x509.Certificate, *x509.CertPool) {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return nil, nil
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	return cs.PeerCertificates[0], inter
}

// factoryIdentity verifies the client certificate as a factory identity: issued by a manufacturer of
// manufacturers/, valid at now, for client authentication.
func (t *trust) factoryIdentity(cs *tls.ConnectionState, now time.Time) (*x509.Certificate, error) {
	leaf, inter := peer(cs)
	if leaf == nil {
		return nil, deny("", "simpleenroll needs a client certificate: the device's factory identity")
	}
	_ = t.reload(false)
	t.mu.Lock()
	makers := t.makers
	t.mu.Unlock()
	opts := x509.VerifyOptions{Roots: makers, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	_, err := leaf.Verify(opts)
	if err == nil {
		return leaf, nil
	}
	name := describe(leaf)
	if expired(err) {
		return nil, deny("", "factory identity %s expired %s", name, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if t.isOperational(leaf, inter, now) {
		return nil, deny(leaf.Subject.CommonName, "%s is a device certificate: simpleenroll takes only factory identities (renew with simplereenroll)", name)
	}
	return nil, deny("", "factory identity %s is not issued by an accepted manufacturer: %v", name, err)
}

// operational verifies the client certificate as an operational certificate: chaining to the device CA
// (through the issuing CA, or directly), valid at now, for client authentication.
func (t *trust) operational(cs *tls.ConnectionState, now time.Time) (*x509.Certificate, error) {
	leaf, inter := peer(cs)
	if leaf == nil {
		return nil, deny("", "simplereenroll needs a client certificate: the device's current certificate")
	}
	if t.isOperational(leaf, inter, now) {
		return leaf, nil
	}
	_ = t.reload(false)
	t.mu.Lock()
	makers := t.makers
	t.mu.Unlock()
	name := describe(leaf)
	switch {
	case t.isOperational(leaf, inter, leaf.NotAfter):
		return nil, deny(leaf.Subject.CommonName, "device %s: certificate expired %s: enrol again with the factory identity",
			leaf.Subject.CommonName, leaf.NotAfter.UTC().Format(time.RFC3339))
	case verifies(leaf, makers, inter, leaf.NotAfter):
		return nil, deny("", "%s is a factory identity: simplereenroll takes the current device certificate (enrol with simpleenroll)", name)
	}
	return nil, deny("", "%s does not chain to the device CA", name)
}

// known reports whether leaf chains to a manufacturer or to the device CA, whatever its validity period.
func (t *trust) known(leaf *x509.Certificate, inter *x509.CertPool) bool {
	t.mu.Lock()
	makers := t.makers
	t.mu.Unlock()
	return t.isOperational(leaf, inter, leaf.NotAfter) || verifies(leaf, makers, inter, leaf.NotAfter)
}

// isOperational reports whether leaf chains to the device CA (directly or through the issuing CA) at now.
func (t *trust) isOperational(leaf *x509.Certificate, inter *x509.CertPool, now time.Time) bool {
	roots := x509.NewCertPool()
	roots.AddCert(t.deviceCA)
	all := inter.Clone()
	all.AddCert(t.ca.Cert())
	return verifies(leaf, roots, all, now)
}

func verifies(leaf *x509.Certificate, roots, inter *x509.CertPool, now time.Time) bool {
	if roots == nil {
		return false
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err == nil
}

func expired(err error) bool {
	var ce x509.CertificateInvalidError
	return errors.As(err, &ce) && ce.Reason == x509.Expired
}

// describe names a certificate in a refusal: its subject CN and serial.
func describe(c *x509.Certificate) string {
	return fmt.Sprintf("%q (serial %x)", c.Subject.CommonName, c.SerialNumber)
}

// allowed returns the factory identity's allow-list serial and the device ID it may enrol as.
func (t *trust) allowed(leaf *x509.Certificate) (serial, id string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	hexSerial := fmt.Sprintf("%x", leaf.SerialNumber)
	for _, s := range []string{leaf.Subject.SerialNumber, hexSerial} {
		if id, ok := t.allow[s]; ok && s != "" {
			return s, id, nil
		}
	}
	serial = leaf.Subject.SerialNumber
	if serial == "" {
		serial = hexSerial
	}
	return "", "", deny("", "factory identity %s (issuer %q) is not on the enrolment allow-list", serial, leaf.Issuer.CommonName)
}

// identityKey names a factory identity in the bindings: its manufacturer and its allow-list serial.
func identityKey(leaf *x509.Certificate, serial string) string {
	return leaf.Issuer.CommonName + "/" + serial
}

// Device authenticates a device on another route of the HTTPS listener: its client certificate must be an
// operational certificate (through the device CA, valid now, for client authentication) that is not revoked. It
// returns the device ID (the certificate's CN), or a refusal naming why.
func (s *Server) Device(cs *tls.ConnectionState) (string, error) {
	leaf, err := s.trust.operational(cs, time.Now())
	if err != nil {
		return "", err
	}
	id := leaf.Subject.CommonName
	if s.o.Revoked != nil && s.o.Revoked(leaf) {
		return "", deny(id, "device %s: certificate serial %x is revoked", id, leaf.SerialNumber)
	}
	return id, nil
}
