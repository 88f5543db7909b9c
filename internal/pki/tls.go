package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"

	"github.com/vitalgate/vitalgate/internal/fileerr"
)

// keyPair serves a certificate and key from files, re-reading them when either file's identity, modification
// time or size changes. A pair that fails to load (for example half-replaced) never replaces the one in use.
type keyPair struct {
	certFile, keyFile string

	mu            sync.Mutex
	cert          *tls.Certificate
	certFI, keyFI os.FileInfo
}

// newKeyPair loads the pair once, so that a bad file fails at start-up.
func newKeyPair(certFile, keyFile string) (*keyPair, error) {
	kp := &keyPair{certFile: certFile, keyFile: keyFile}
	if _, err := kp.get(); err != nil {
		return nil, err
	}
	return kp, nil
}

// same reports whether a and b describe the same unchanged file.
func same(a, b os.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) && a.ModTime().Equal(b.ModTime()) && a.Size() == b.Size()
}

// get returns the current pair, reloading it when the files changed.
func (kp *keyPair) get() (*tls.Certificate, error) {
	cfi, cerr := os.Stat(kp.certFile)
	kfi, kerr := os.Stat(kp.keyFile)
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if kp.cert != nil && (cerr != nil || kerr != nil || (same(cfi, kp.certFI) && same(kfi, kp.keyFI))) {
		return kp.cert, nil // unchanged, or being replaced: keep serving the loaded pair
	}
	c, err := tls.LoadX509KeyPair(kp.certFile, kp.keyFile)
	if err != nil {
		if kp.cert != nil {
			return kp.cert, nil
		}
		return nil, keyPairError(kp.certFile, kp.keyFile, err)
	}
	kp.cert, kp.certFI, kp.keyFI = &c, cfi, kfi
	return kp.cert, nil
}

// keyPairError names the file of a pair that failed to load: the one of a
// read error, both for a parse error (crypto/tls says "certificate input" or
// "key input" but not which file that is).
func keyPairError(certFile, keyFile string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fileerr.Wrap("load key pair", pe.Path, err)
	}
	return fmt.Errorf("load key pair %s, %s: %w", certFile, keyFile, err)
}

// ServerTLS returns a server configuration (TLS 1.2 minimum, session tickets on) that serves certFile/keyFile
// through GetCertificate, reloading them when the files change. With clientCAs, it requires a client certificate
// that verifies against clientCAs, and its VerifyConnection refuses a client whose leaf serial is on rev (also
// on resumed sessions).
func ServerTLS(certFile, keyFile string, clientCAs *x509.CertPool, rev *Revocations) (*tls.Config, error) {
	kp, err := newKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return kp.get()
		},
	}
	if clientCAs != nil {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		cfg.ClientCAs = clientCAs
	}
	if rev != nil {
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return nil // no client certificate; ClientAuth decides whether that is allowed
			}
			leaf := cs.PeerCertificates[0]
			if rev.IsRevoked(leaf.SerialNumber) {
				return fmt.Errorf("client certificate of %q (serial %x) is revoked", leaf.Subject.CommonName, leaf.SerialNumber)
			}
			return nil
		}
	}
	return cfg, nil
}

// ClientTLS returns a client configuration (TLS 1.2 minimum) that trusts the servers chaining to caFile (ca.crt)
// and, when certFile and keyFile are given, presents that client certificate, reloaded when the files change.
// Both empty means no client certificate.
func ClientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" {
		return nil, errors.New("client TLS: no CA file")
	}
	roots, err := LoadPool(caFile)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}
	switch {
	case certFile == "" && keyFile == "":
	case certFile == "" || keyFile == "":
		return nil, errors.New("client TLS: a client certificate needs both a certificate and a key file")
	default:
		kp, err := newKeyPair(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return kp.get()
		}
	}
	return cfg, nil
}
