package certpub

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// reloadAfter is the least time between two loads of the CA files: a
// certificate whose chain cannot be built reloads them (a renewed issuing
// CA), at most this often.
const reloadAfter = 10 * time.Second

// caSet is what a device certificate chains to: the device CA, and the
// gateway's issuing CA when the PKI directory has one.
type caSet struct {
	dir string

	mu       sync.Mutex
	roots    *x509.CertPool // the device CA
	inter    *x509.CertPool // the issuing CA, or empty
	loadedAt time.Time
}

// loadCAs reads device-ca.crt and, when present, issuing-ca.crt.
func loadCAs(dir string) (*caSet, error) {
	c := &caSet{dir: dir}
	if err := c.load(time.Now()); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *caSet) load(now time.Time) error {
	roots, err := pki.LoadPool(filepath.Join(c.dir, pki.FileDeviceCA))
	if err != nil {
		return fmt.Errorf("certpub: device CA: %w", err)
	}
	inter := x509.NewCertPool()
	issuing := filepath.Join(c.dir, pki.FileIssuingCA)
	if _, err := os.Stat(issuing); err == nil {
		if inter, err = pki.LoadPool(issuing); err != nil {
			return fmt.Errorf("certpub: issuing CA: %w", err)
		}
	}
	c.mu.Lock()
	c.roots, c.inter, c.loadedAt = roots, inter, now
	c.mu.Unlock()
	return nil
}

// chain returns leaf's verified chain up to the device CA (leaf first), for
// client authentication, at now. When it does not verify, the CA files are
// read again (at most every reloadAfter) and it is tried once more.
func (c *caSet) chain(leaf *x509.Certificate, now time.Time) ([]*x509.Certificate, error) {
	chain, err := c.verify(leaf, now)
	if err == nil {
		return chain, nil
	}
	c.mu.Lock()
	stale := now.Sub(c.loadedAt) >= reloadAfter
	c.mu.Unlock()
	if !stale {
		return nil, err
	}
	if lerr := c.load(now); lerr != nil {
		return nil, errors.Join(err, lerr)
	}
	return c.verify(leaf, now)
}

func (c *caSet) verify(leaf *x509.Certificate, now time.Time) ([]*x509.Certificate, error) {
	c.mu.Lock()
	roots, inter := c.roots, c.inter
	c.mu.Unlock()
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return nil, fmt.Errorf("certificate of %q does not chain to the device CA: %w", leaf.Subject.CommonName, err)
	}
	return chains[0], nil
}

// encodePEM is the chain as PEM CERTIFICATE blocks, in order.
func encodePEM(chain []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range chain {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}) // a bytes.Buffer does not fail
	}
	return b.Bytes()
}
