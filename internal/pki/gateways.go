package pki

import (
	"crypto/x509"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// GatewayPaths returns the client certificate and key files of gateway id under [GatewaysDir] of the PKI
// directory dir (the gateways [IssueGateway] adds; the first gateway's pair is gateway-client.crt/.key).
func GatewayPaths(dir, id string) (certFile, keyFile string) {
	base := filepath.Join(dir, GatewaysDir, id)
	return base + ".crt", base + ".key"
}

// IssueGateway issues a gateway client certificate (CN = id, OU = site, client auth, signed by the gateway CA)
// with a fresh key of algorithm key and writes gateways/ID.crt and gateways/ID.key (mode 0600). It refuses with
// an error wrapping [ErrExists] when the gateway's certificate exists, and when id is the gateway of
// gateway-client.crt.
func IssueGateway(dir, id, site string, key KeyAlg) error {
	if !ValidDeviceID(id) {
		return fmt.Errorf("invalid gateway ID %q (want "+idSyntax+")", id)
	}
	if !ValidDeviceID(site) {
		return fmt.Errorf("invalid site %q (want "+idSyntax+")", site)
	}
	if _, err := ParseKeyAlg(string(key)); err != nil {
		return err
	}
	certFile, keyFile := GatewayPaths(dir, id)
	if exists(certFile) {
		return &existsError{path: certFile, hint: " (revoke the gateway and remove its files to issue a new one)"}
	}
	if c, err := LoadCert(filepath.Join(dir, FileGatewayClient)); err == nil && c.Subject.CommonName == id {
		return &existsError{path: filepath.Join(dir, FileGatewayClient), hint: " has gateway " + id + " (choose another ID)"}
	}
	ca, err := loadIssuer(filepath.Join(dir, FileGatewayCA), filepath.Join(dir, FileGatewayCAKey))
	if err != nil {
		return fmt.Errorf("gateway CA: %w", err)
	}
	k, err := generateKey(key)
	if err != nil {
		return fmt.Errorf("generate gateway key: %w", err)
	}
	_, der, err := ca.sign(Profiles.GatewayClient, Request{CommonName: id, OrgUnit: site}, k.Public(), nil, time.Now())
	if err != nil {
		return fmt.Errorf("gateway %s: %w", id, err)
	}
	kb, err := encodeKey(k)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, GatewaysDir), 0o755); err != nil {
		return fmt.Errorf("create gateways directory: %w", err)
	}
	if err := writeFile(keyFile, kb, 0o600, true); err != nil {
		return err
	}
	return writeFile(certFile, encodeCert(der), 0o644, true)
}

// gatewayCerts returns the client certificates of gateway id in dir: gateway-client.crt when its CN is id, and
// gateways/ID.crt.
func gatewayCerts(dir, id string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	if c, err := LoadCert(filepath.Join(dir, FileGatewayClient)); err == nil && c.Subject.CommonName == id {
		out = append(out, c)
	}
	certFile, _ := GatewayPaths(dir, id)
	if exists(certFile) {
		c, err := LoadCert(certFile)
		if err != nil {
			return nil, fmt.Errorf("gateway %s: %w", id, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("gateway %s: no certificate (neither %s has CN %s nor %s exists)", id, FileGatewayClient, id, certFile)
	}
	return out, nil
}

// RevokeGateway adds the client certificates of gateway id (gateway-client.crt when its CN is id, and
// gateways/ID.crt) to gateway-crl.pem, re-signed by the gateway CA with the next CRL number, under the PKI
// directory's writer lock ([LockDir]). The cloud broker reloads the list and closes the gateway's session. A
// missing gateway-crl.pem is started anew; one that does not verify with gateway-ca.crt is an error. Revoking a
// gateway twice is not an error (the CRL is unchanged).
func RevokeGateway(dir, id string) error {
	if !ValidDeviceID(id) {
		return fmt.Errorf("invalid gateway ID %q (want "+idSyntax+")", id)
	}
	certs, err := gatewayCerts(dir, id)
	if err != nil {
		return err
	}
	ca, err := loadIssuer(filepath.Join(dir, FileGatewayCA), filepath.Join(dir, FileGatewayCAKey))
	if err != nil {
		return fmt.Errorf("gateway CA: %w", err)
	}
	for _, c := range certs {
		if err := c.CheckSignatureFrom(ca.cert); err != nil {
			return fmt.Errorf("gateway %s: certificate not issued by this gateway CA", id)
		}
	}
	release, err := LockDir(dir)
	if err != nil {
		return err
	}
	defer release()
	return addToCRL(filepath.Join(dir, FileGatewayCRL), ca, certs, time.Now())
}

// addToCRL adds the serial numbers of certs to the CRL file path signed by ca, re-signed with the next CRL
// number; a missing file is started at number 1, a file that does not verify is an error.
func addToCRL(path string, ca *issuer, certs []*x509.Certificate, now time.Time) error {
	var entries []x509.RevocationListEntry
	number := big.NewInt(1)
	old, _, err := readCRL(path, ca.cert)
	switch {
	case err == nil:
		for _, e := range old.RevokedCertificateEntries { // keep only the fields CreateRevocationList re-encodes
			entries = append(entries, x509.RevocationListEntry{SerialNumber: e.SerialNumber,
				RevocationTime: e.RevocationTime, ReasonCode: e.ReasonCode})
		}
		if old.Number != nil {
			number.Add(old.Number, big.NewInt(1))
		}
	case exists(path):
		return err
	}
	added := 0
	for _, c := range certs {
		if !slices.ContainsFunc(entries, func(e x509.RevocationListEntry) bool { return e.SerialNumber.Cmp(c.SerialNumber) == 0 }) {
			entries = append(entries, x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: now})
			added++
		}
	}
	if added == 0 && err == nil {
		return nil
	}
	b, err := signCRL(ca, entries, number, now)
	if err != nil {
		return err
	}
	return writeFile(path, b, 0o644, true)
}
