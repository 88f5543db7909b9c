package pki

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
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
	return revokeInCRL(filepath.Join(dir, FileGatewayCRL), ca, certs, time.Now())
}
