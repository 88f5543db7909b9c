package estclient

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/pkcs7"

	"github.com/vitalgate/vitalgate/internal/pki"
)

func TestNewURL(t *testing.T) {
	roots := x509.NewCertPool()
	for in, want := range map[string]string{
		"https://127.0.0.1:8443":                 "https://127.0.0.1:8443/.well-known/est/cacerts",
		"https://127.0.0.1:8443/":                "https://127.0.0.1:8443/.well-known/est/cacerts",
		"https://gw:8443/.well-known/est/":       "https://gw:8443/.well-known/est/cacerts",
		"https://gw:8443/.well-known/est/site-a": "https://gw:8443/.well-known/est/site-a/cacerts",
	} {
		c, err := New(in, roots, 0)
		if err != nil {
			t.Fatalf("New(%q): %v", in, err)
		}
		if got := c.URL(OpCACerts); got != want {
			t.Errorf("New(%q).URL = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{
		"http://127.0.0.1:8443":        "want https://host:port",
		"gw.example":                   "want https://host:port",
		"https://127.0.0.1:8443/?x=1":  "no query",
		"https://u:p@127.0.0.1:8443/":  "no query, fragment or user info",
		"https://127.0.0.1:8443/%zz":   "invalid URL escape",
		"https://127.0.0.1:8443/#frag": "no query",
	} {
		if _, err := New(in, roots, 0); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New(%q) = %v, want an error with %q", in, err, want)
		}
	}
	if _, err := New("https://127.0.0.1:8443", nil, 0); err == nil {
		t.Error("New without roots: no error")
	}
}

func TestNewCSR(t *testing.T) {
	for _, alg := range []pki.KeyAlg{pki.P256, pki.Ed25519} {
		der, key, err := NewCSR("dev-00001", alg)
		if err != nil {
			t.Fatal(err)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			t.Fatal(err)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Errorf("%s: self-signature: %v", alg, err)
		}
		if csr.Subject.CommonName != "dev-00001" {
			t.Errorf("%s: CN %q", alg, csr.Subject.CommonName)
		}
		switch key.(type) {
		case *ecdsa.PrivateKey, ed25519.PrivateKey:
		default:
			t.Errorf("%s: key %T", alg, key)
		}
		if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(csr.PublicKey) {
			t.Errorf("%s: CSR is not for the returned key", alg)
		}
	}
	if _, _, err := NewCSR("d", "rsa"); err == nil || !strings.Contains(err.Error(), "want p256 or ed25519") {
		t.Errorf("rsa: %v", err)
	}
}

// issue returns a PKI directory and an operational certificate for key
// from its issuing CA.
func issue(t *testing.T, id string, alg pki.KeyAlg) (dir string, leaf *x509.Certificate, der []byte, key any) {
	t.Helper()
	dir = t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	ca, err := pki.OpenIssuingCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	csr, k, err := NewCSR(id, alg)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := x509.ParseCertificateRequest(csr)
	leaf, err = ca.Issue(id, req.PublicKey, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return dir, leaf, leaf.Raw, k
}

func TestDecodeCertsAndKeyPair(t *testing.T) {
	dir, leaf, der, key := issue(t, "dev-00001", pki.Ed25519)
	issuing, err := pki.LoadCert(filepath.Join(dir, pki.FileIssuingCA))
	if err != nil {
		t.Fatal(err)
	}
	deviceCA, err := pki.LoadCert(filepath.Join(dir, pki.FileDeviceCA))
	if err != nil {
		t.Fatal(err)
	}
	p7, err := pkcs7.DegenerateCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	// Line breaks every 64 characters, as servers wrap base64.
	b64 := base64.StdEncoding.EncodeToString(p7)
	var wrapped strings.Builder
	for i := 0; i < len(b64); i += 64 {
		wrapped.WriteString(b64[i:min(i+64, len(b64))] + "\r\n")
	}
	certs, err := DecodeCerts([]byte(wrapped.String()))
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != 1 || !bytes.Equal(certs[0].Raw, leaf.Raw) {
		t.Fatalf("decoded %d certificates, not the leaf", len(certs))
	}
	kp, err := KeyPair(key.(ed25519.PrivateKey), certs, []*x509.Certificate{deviceCA, issuing})
	if err != nil {
		t.Fatal(err)
	}
	if len(kp.Certificate) != 2 || !bytes.Equal(kp.Certificate[1], issuing.Raw) {
		t.Errorf("chain of %d: want leaf + issuing CA", len(kp.Certificate))
	}
	if kp.Leaf != certs[0] {
		t.Error("Leaf not set")
	}
	_, other, _ := ed25519.GenerateKey(nil)
	if _, err := KeyPair(other, certs, nil); err == nil || !strings.Contains(err.Error(), "no certificate for the requested key") {
		t.Errorf("KeyPair for another key: %v", err)
	}

	for in, want := range map[string]string{
		"not base64!":         "not base64",
		"aGVsbG8=":            "not PKCS#7",
		"":                    "not PKCS#7",
		b64[:len(b64)/2] + "": "",
	} {
		if _, err := DecodeCerts([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("DecodeCerts(%.20q) = %v, want an error with %q", in, err, want)
		}
	}
}
