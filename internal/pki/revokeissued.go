package pki

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/vitalgate/vitalgate/internal/fileerr"
)

// maxIssuedBundle bounds how much of an issued/ID.pem bundle [RevokeDevice] reads.
const maxIssuedBundle = 1 << 20

// revokeIssued adds the certificates of the bundle at path (issued/ID.pem) that the issuing CA signed to
// issuing-crl.pem, and returns how many the bundle holds. A bundle with none is an error. The caller holds the
// directory's writer lock.
func revokeIssued(dir, id, path string) (int, error) {
	ca, err := loadIssuer(filepath.Join(dir, FileIssuingCA), filepath.Join(dir, FileIssuingCAKey))
	if err != nil {
		return 0, fmt.Errorf("issuing CA: %w", err)
	}
	bundle, err := readBundle(path)
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

// readBundle parses the PEM certificates of the file at path (at most maxIssuedBundle bytes).
func readBundle(path string) ([]*x509.Certificate, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fileerr.Wrap("read issued certificates", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxIssuedBundle+1))
	if err != nil {
		return nil, fileerr.Wrap("read issued certificates", path, err)
	}
	if len(data) > maxIssuedBundle {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxIssuedBundle)
	}
	var out []*x509.Certificate
	for rest := bytes.TrimSpace(data); len(rest) > 0; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: parse certificate: %w", path, err)
		}
		out = append(out, c)
	}
	return out, nil
}
