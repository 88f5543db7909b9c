package posture

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// maxFileSize bounds how much of one certificate or CRL file is read.
const maxFileSize = 64 << 20

// minRSABits is the smallest RSA key the policy accepts for a CA (128-bit
// security, as P-256).
const minRSABits = 3072

// PKIState is what the checks of live connections need from the PKI
// directory: the serials its revocation lists revoke and the newest
// certificate on file for each device.
type PKIState struct {
	revoked map[string]string    // issuer DN (raw) + serial → the list's file name
	newest  map[string]time.Time // device ID → latest NotAfter of its certificates on file
}

// revokedKey identifies a certificate across CAs: its issuer and serial.
func revokedKey(rawIssuer []byte, serial []byte) string {
	return string(rawIssuer) + "\x00" + string(serial)
}

// revokedBy names the revocation list that lists c, or "".
func (s *PKIState) revokedBy(c *x509.Certificate) string {
	if s == nil || c.SerialNumber == nil {
		return ""
	}
	return s.revoked[revokedKey(c.RawIssuer, c.SerialNumber.Bytes())]
}

// CheckPKI runs the checks of the PKI directory dir at time now: CA and
// device certificates near their end, revocation lists near or past their
// next update, keys outside policy. Problems reading a file are findings
// too, never errors: the audit reports what it can.
func CheckPKI(dir string, now time.Time, p Policy) (*PKIState, []Finding) {
	p = p.withDefaults()
	c := &pkiCheck{dir: dir, now: now, p: p,
		st: &PKIState{revoked: map[string]string{}, newest: map[string]time.Time{}}}
	c.cas()
	c.crls()
	c.devices()
	sortFindings(c.found)
	return c.st, c.found
}

// pkiCheck is one run of [CheckPKI].
type pkiCheck struct {
	dir   string
	now   time.Time
	p     Policy
	st    *PKIState
	found []Finding
}

func (c *pkiCheck) add(check, sev, subject, format string, args ...any) {
	c.found = append(c.found, Finding{Check: check, Severity: sev, Subject: subject, Detail: fmt.Sprintf(format, args...)})
}

// addDev adds a finding about device dev.
func (c *pkiCheck) addDev(check, sev, dev, format string, args ...any) {
	c.found = append(c.found, Finding{dev: true, Check: check, Severity: sev, Subject: dev, Detail: fmt.Sprintf(format, args...)})
}

// caFiles are the certificates of CAs and of the gateway itself, checked
// against the CA threshold; manufacturers/*.crt are added to them.
var caFiles = []string{pki.FileCA, pki.FileDeviceCA, pki.FileIssuingCA, pki.FileGatewayCA, pki.FileGateway, pki.FileGatewayClient}

// cas checks the CA certificates and the gateway's own: their remaining
// validity and their keys.
func (c *pkiCheck) cas() {
	names := append([]string{}, caFiles...)
	if m, err := filepath.Glob(filepath.Join(c.dir, pki.ManufacturersDir, "*.crt")); err == nil {
		for _, f := range m {
			names = append(names, filepath.Join(pki.ManufacturersDir, filepath.Base(f)))
		}
	}
	for _, name := range names {
		certs, err := pki.LoadCerts(filepath.Join(c.dir, name))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue // an older PKI, or a file this host does not hold
		case err != nil:
			c.add(CheckCACert, High, name, "cannot be read: %v", err)
			continue
		}
		cert := certs[0]
		life := cert.NotAfter.Sub(cert.NotBefore)
		warn := min(c.p.CAWarn, life/3)
		switch rest := cert.NotAfter.Sub(c.now); {
		case rest <= 0:
			c.add(CheckCACert, Critical, name, "%s: %s", cert.Subject.CommonName, left(cert.NotAfter, c.now))
		case rest < warn:
			c.add(CheckCACert, High, name, "%s: %s, under the threshold of %s", cert.Subject.CommonName, left(cert.NotAfter, c.now), days(warn))
		}
		if why := weakCAKey(cert); why != "" {
			c.add(CheckKeyPolicy, High, name, "%s: %s", cert.Subject.CommonName, why)
		}
	}
}

// crlFiles are the revocation lists and the CA that signs each.
var crlFiles = []struct{ crl, ca string }{
	{pki.FileCRL, pki.FileDeviceCA}, {pki.FileIssuingCRL, pki.FileIssuingCA}, {pki.FileGatewayCRL, pki.FileGatewayCA},
}

// crls checks each revocation list: readable, signed by its CA, and not
// past or near its next update; the serials it lists go into the state.
func (c *pkiCheck) crls() {
	for _, f := range crlFiles {
		crl, err := readCRL(filepath.Join(c.dir, f.crl))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err == nil {
			var ca []*x509.Certificate
			if ca, err = pki.LoadCerts(filepath.Join(c.dir, f.ca)); err == nil {
				if err = crl.CheckSignatureFrom(ca[0]); err != nil {
					err = fmt.Errorf("not signed by %s: %w", f.ca, err)
				}
			}
		}
		if err != nil {
			c.add(CheckCRL, High, f.crl, "cannot be used: %v; the gateway keeps the list it loaded last", err)
			continue
		}
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber != nil {
				c.st.revoked[revokedKey(crl.RawIssuer, e.SerialNumber.Bytes())] = f.crl
			}
		}
		c.crlAge(f.crl, crl)
	}
}

// crlAge reports a list past its next update (high) or within the CRL
// threshold of it (medium): under a quarter of its period left, if that is
// shorter.
func (c *pkiCheck) crlAge(name string, crl *x509.RevocationList) {
	if crl.NextUpdate.IsZero() {
		return
	}
	period := crl.NextUpdate.Sub(crl.ThisUpdate)
	warn := min(c.p.CRLWarn, period/4)
	switch rest := crl.NextUpdate.Sub(c.now); {
	case rest <= 0:
		c.add(CheckCRL, High, name, "past its next update %s (%s ago): readers that enforce it (openssl, other brokers) refuse every certificate it covers; sign a fresh one",
			crl.NextUpdate.UTC().Format(time.RFC3339), c.now.Sub(crl.NextUpdate).Round(time.Minute))
	case rest < warn:
		c.add(CheckCRL, Medium, name, "next update %s is near (%s left, threshold %s); sign a fresh one",
			crl.NextUpdate.UTC().Format(time.RFC3339), rest.Round(time.Minute), warn.Round(time.Minute))
	}
}

// deviceCert is one device certificate on file.
type deviceCert struct {
	file string
	cert *x509.Certificate
}

// devices checks the device certificates on file: devices/ID.crt (issued
// by hand) and the newest of issued/ID.pem (at enrolment). A device whose
// latest certificate expires within the threshold has no renewal.
func (c *pkiCheck) devices() {
	latest := map[string]deviceCert{}
	for _, dc := range c.deviceCerts() {
		if why := devicePolicy(dc.cert); why != "" {
			c.add(CheckKeyPolicy, High, dc.file, "device %s: %s", dc.cert.Subject.CommonName, why)
		}
		if c.st.revokedBy(dc.cert) != "" {
			continue // revoked: it will not be renewed
		}
		id := dc.cert.Subject.CommonName
		if cur, ok := latest[id]; !ok || dc.cert.NotAfter.After(cur.cert.NotAfter) {
			latest[id] = dc
		}
	}
	ids := make([]string, 0, len(latest))
	for id, dc := range latest {
		c.st.newest[id] = dc.cert.NotAfter
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		dc := latest[id]
		switch rest := dc.cert.NotAfter.Sub(c.now); {
		case rest <= 0:
			c.addDev(CheckDeviceCert, Low, id, "%s: %s and no later certificate on file: the device cannot connect until it enrols again (or remove the file)", dc.file, left(dc.cert.NotAfter, c.now))
		case rest < c.p.DeviceCertWarn:
			c.addDev(CheckDeviceCert, High, id, "%s: %s and no renewal on file", dc.file, left(dc.cert.NotAfter, c.now))
		}
	}
}

// deviceCerts reads devices/*.crt and the first (newest) certificate of
// each issued/*.pem. An unreadable file is a key_policy finding: nothing
// can be said of its key.
func (c *pkiCheck) deviceCerts() []deviceCert {
	var out []deviceCert
	for _, pat := range []string{filepath.Join(pki.DevicesDir, "*.crt"), filepath.Join(pki.IssuedDir, "*.pem")} {
		files, _ := filepath.Glob(filepath.Join(c.dir, pat))
		for _, f := range files {
			rel, _ := filepath.Rel(c.dir, f)
			certs, err := pki.LoadCerts(f)
			if err != nil {
				c.add(CheckKeyPolicy, Medium, rel, "cannot be read: %v", err)
				continue
			}
			out = append(out, deviceCert{file: rel, cert: certs[0]})
		}
	}
	return out
}

// devicePolicy says why a device certificate's key is outside policy
// (ECDSA P-256 or Ed25519), or "".
func devicePolicy(c *x509.Certificate) string {
	switch k := c.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return ""
		}
		return fmt.Sprintf("ECDSA key on %s; the policy is P-256 or Ed25519 (the gateway refuses it)", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return ""
	}
	return fmt.Sprintf("%s key; the policy is ECDSA P-256 or Ed25519 (the gateway refuses it)", c.PublicKeyAlgorithm)
}

// weakCAKey says why a CA's key is too weak (RSA under 3072 bits, ECDSA
// under 256), or "".
func weakCAKey(c *x509.Certificate) string {
	switch k := c.PublicKey.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return fmt.Sprintf("RSA key of %d bits, under %d", k.N.BitLen(), minRSABits)
		}
	case *ecdsa.PublicKey:
		if k.Curve.Params().BitSize < 256 {
			return fmt.Sprintf("ECDSA key on %s, under 256 bits", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return fmt.Sprintf("%s key, not RSA, ECDSA or Ed25519", c.PublicKeyAlgorithm)
	}
	return ""
}

// readFile reads at most maxFileSize bytes of path.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxFileSize)
	}
	return b, nil
}

// readCRL parses a PEM (or DER) CRL file.
func readCRL(path string) (*x509.RevocationList, error) {
	b, err := readFile(path)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "X509 CRL" {
			return nil, fmt.Errorf("%s: PEM block %q, want X509 CRL", path, blk.Type)
		}
		b = blk.Bytes
	}
	crl, err := x509.ParseRevocationList(b)
	if err != nil {
		return nil, fmt.Errorf("%s: parse CRL: %w", path, err)
	}
	return crl, nil
}

// days writes a threshold in days (or hours under two days).
func days(d time.Duration) string {
	if d < 48*time.Hour {
		return fmt.Sprintf("%.0f hours", d.Hours())
	}
	return strings.TrimSuffix(fmt.Sprintf("%.0f days", d.Hours()/24), ".0")
}
