package cloud

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// Bounds of a published chain (certs/{site}/{device}); a gateway publishes
// 2 or 3 certificates of about 600 bytes of PEM each.
const (
	maxChainBytes = 16 << 10
	maxChainCerts = 4
)

// keysKept is how many of a device's published certificates a watcher
// checks signatures with: the current one and the one before it, so that
// records a device signed before its renewal, still queued at the gateway
// when the renewed chain is published, verify.
const keysKept = 2

// SigUnverified is the status of a record whose device has no published
// chain yet, when the watcher has no PKI directory to fall back on.
const SigUnverified = "unverified (no certificate yet)"

// Chain is a published certificate chain as a watcher judged it.
type Chain struct {
	Dev  string
	Leaf *x509.Certificate // nil when Err is set before parsing
	Err  error             // why the chain was rejected; nil when accepted
}

// Line renders c as one line: accepted with the certificate's serial and
// expiry, or rejected with the reason.
func (c *Chain) Line() string {
	if c.Err != nil {
		return fmt.Sprintf("certificate of %s REJECTED: %v", c.Dev, c.Err)
	}
	return fmt.Sprintf("certificate of %s: chain ok (serial %x, expires %s)", c.Dev, c.Leaf.SerialNumber,
		c.Leaf.NotAfter.UTC().Format("2006-01-02"))
}

// HandleChain checks a chain published on topic (certs/{site}/{device}):
// PEM certificates, the device's first, that chain to the watcher's ca.crt
// for client authentication, the first with the device ID as its common
// name. An accepted chain's key checks the device's records from then on
// (with the key before it); a rejected one changes nothing.
func (w *Watcher) HandleChain(topic string, payload []byte) *Chain {
	lv := strings.Split(topic, "/")
	c := &Chain{Dev: lv[len(lv)-1]}
	if len(lv) != 3 || lv[0] != "certs" || !pki.ValidDeviceID(c.Dev) {
		c.Err = fmt.Errorf("topic %q is not certs/{site}/{device}", topic)
		return c
	}
	certs, err := parseChain(payload)
	if err != nil {
		c.Err = err
		return c
	}
	c.Leaf = certs[0]
	inter := x509.NewCertPool()
	for _, ca := range certs[1:] {
		inter.AddCert(ca)
	}
	if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: w.roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		c.Err = fmt.Errorf("does not chain to ca.crt: %w", err)
		return c
	}
	if cn := c.Leaf.Subject.CommonName; cn != c.Dev {
		c.Err = fmt.Errorf("certificate CN %q is not the device %s", cn, c.Dev)
		return c
	}
	v, err := envelope.NewVerifier(c.Leaf.PublicKey, c.Dev)
	if err != nil {
		c.Err = err
		return c
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	old, ok := w.chains[c.Dev]
	if !ok && len(w.chains) >= maxCachedVerifiers {
		clear(w.chains)
	}
	w.chains[c.Dev] = append([]*devKey{{v: v, cert: c.Leaf}}, old[:min(len(old), keysKept-1)]...)
	return c
}

// parseChain decodes up to maxChainCerts PEM certificates from payload,
// which holds nothing else.
func parseChain(payload []byte) ([]*x509.Certificate, error) {
	if len(payload) > maxChainBytes {
		return nil, fmt.Errorf("chain of %d bytes exceeds %d", len(payload), maxChainBytes)
	}
	var certs []*x509.Certificate
	rest := payload
	for len(strings.TrimSpace(string(rest))) > 0 {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil || b.Type != "CERTIFICATE" {
			return nil, errors.New("not a PEM certificate chain")
		}
		if len(certs) == maxChainCerts {
			return nil, fmt.Errorf("more than %d certificates", maxChainCerts)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("empty chain")
	}
	return certs, nil
}

// published returns the keys of dev's published chains, newest first.
func (w *Watcher) published(dev string) []*devKey {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.chains[dev]
}
