package est

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// enroll is simpleenroll: a factory identity on the allow-list gets an operational certificate for its
// allow-listed device ID, once bound to it.
func (s *Server) enroll(w http.ResponseWriter, r *http.Request) error {
	leaf, err := s.trust.factoryIdentity(r.TLS, time.Now())
	if err != nil {
		return err
	}
	serial, id, err := s.trust.allowed(leaf)
	if err != nil {
		return err
	}
	csr, err := readCSR(w, r)
	if err != nil {
		return about(err, id, "factory identity "+serial+": ")
	}
	if csr.Subject.CommonName != id {
		return deny(id, "factory identity %s: CSR subject CN %q is not the allow-listed device ID %q", serial, csr.Subject.CommonName, id)
	}
	if err := s.bindings.bind(identityKey(leaf, serial), id); err != nil {
		return about(err, id, "factory identity "+serial+": ")
	}
	cert, err := s.o.CA.Issue(id, csr.PublicKey, s.o.Validity)
	return s.answer(w, r, id, cert, err, "enrolled", "factory_serial", serial)
}

// reenroll is simplereenroll: a device's current operational certificate gets a new one for the same ID.
func (s *Server) reenroll(w http.ResponseWriter, r *http.Request) error {
	leaf, err := s.trust.operational(r.TLS, time.Now())
	if err != nil {
		return err
	}
	id := leaf.Subject.CommonName
	if s.o.Revoked != nil && s.o.Revoked(leaf) {
		return deny(id, "device %s: certificate serial %x is revoked", id, leaf.SerialNumber)
	}
	csr, err := readCSR(w, r)
	if err != nil {
		return about(err, id, "device "+id+": ")
	}
	if csr.Subject.CommonName != id {
		return deny(id, "device %s: CSR subject CN %q differs from the current certificate's", id, csr.Subject.CommonName)
	}
	cert, err := s.o.CA.Reissue(leaf, csr.PublicKey, s.o.Validity)
	if errors.Is(err, pki.ErrRevoked) {
		return deny(id, "device %s: certificate %v", id, err)
	}
	return s.answer(w, r, id, cert, err, "re-enrolled", "previous_serial", fmt.Sprintf("%x", leaf.SerialNumber))
}

// about names the device and the identity in a refusal: its device ID dev and a prefix of its detail.
func about(err error, dev, prefix string) error {
	var ref *refusal
	if errors.As(err, &ref) {
		ref.dev, ref.detail = dev, prefix+ref.detail
	}
	return err
}

// answer answers the operational certificate the issuing CA signed for id (or its error err), and logs it.
func (s *Server) answer(w http.ResponseWriter, r *http.Request, id string, cert *x509.Certificate, err error, what, k, v string) error {
	if errors.Is(err, pki.ErrTooManyIssued) {
		return deny(id, "%v", err)
	}
	if err != nil {
		return fmt.Errorf("issue certificate for %s: %w", id, err)
	}
	s.o.Log.Info("device "+what, "dev", id, "serial", fmt.Sprintf("%x", cert.SerialNumber),
		"not_after", cert.NotAfter.UTC().Format(time.RFC3339), k, v, "remote", r.RemoteAddr)
	return writeCerts(w, cert)
}

// readCSR reads a base64 PKCS#10 body (RFC 7030 section 4.2.1: line breaks allowed) of at most [MaxBody]
// bytes, and checks its self-signature and its key against the policy.
func readCSR(w http.ResponseWriter, r *http.Request) (*x509.CertificateRequest, error) {
	if ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || ct != "application/pkcs10" {
		return nil, malformed(http.StatusUnsupportedMediaType, "Content-Type %q, want application/pkcs10", r.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			return nil, malformed(http.StatusRequestEntityTooLarge, "request body over %d bytes", MaxBody)
		}
		return nil, malformed(http.StatusBadRequest, "read request body: %v", err)
	}
	der, err := base64.StdEncoding.DecodeString(string(stripSpace(body)))
	if err != nil {
		return nil, malformed(http.StatusBadRequest, "CSR is not base64: %v", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, malformed(http.StatusBadRequest, "CSR is not DER PKCS#10: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, malformed(http.StatusBadRequest, "CSR self-signature invalid: %v", err)
	}
	if err := keyPolicy(csr.PublicKey); err != nil {
		return nil, deny("", "CSR of %q: %v", csr.Subject.CommonName, err)
	}
	return csr, nil
}

// stripSpace removes the white space (line breaks of MIME base64) from b.
func stripSpace(b []byte) []byte {
	return bytes.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, b)
}

// keyPolicy accepts the device keys of the deployment: ECDSA P-256 and Ed25519.
func keyPolicy(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return nil
		}
		return fmt.Errorf("key ECDSA %s outside policy (want P-256 or Ed25519)", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return nil
	}
	return fmt.Errorf("key %T outside policy (want ECDSA P-256 or Ed25519)", pub)
}
