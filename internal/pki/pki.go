// Package pki is the deployment's public key infrastructure: the CA hierarchy, the certificate profiles, the PEM
// files of the PKI directory, device certificates, the device revocation list, app tokens, and TLS configurations
// whose certificates and revocation lists reload without a restart.
//
// # Hierarchy
//
// ca.crt is the root and the trust anchor of every TLS server. It signs two intermediates and the server
// certificates:
//
//	ca.crt ─┬─ device-ca.crt  ─┬─ devices/ID.crt       (client auth, CN = device ID)
//	        │                  └─ issuing-ca.crt ── operational certificates of enrolled devices
//	        ├─ gateway-ca.crt ── gateway-client.crt    (client auth, CN = gateway ID, OU = site)
//	        ├─ gateway.crt                             (server auth)
//	        └─ broker.crt                              (server auth)
//
// The intermediates carry the client-auth extended key usage, so they cannot issue server certificates, and a
// pool holding only one of them accepts that intermediate's clients and nobody else's: a device certificate is
// never accepted as a gateway, nor a gateway certificate as a device.
//
// # Files
//
// [Init] writes the whole directory (see the File* constants); [IssueDevice] and [IssueDevices] add device pairs
// under [DevicesDir]; [Revoke] adds a device to [FileCRL] and its enrolled certificates to [FileIssuingCRL];
// [RenewIssuing] re-signs the issuing CA; [IssueFactory] writes factory identities under [FactoryDir] and lists
// them in the allow-list [FileEnroll] ([ReadAllowList]). Private keys are PKCS#8 PEM files created with mode
// 0600 (never widened by the umask, never chmod-ed afterwards). Files are written to a temporary name, synced and
// renamed into place, so readers never see half a file; the bulk path [IssueDevices] writes device pairs in place
// for speed and repairs an interrupted pair on its next run.
//
// # Reloading
//
// [ServerTLS] serves its certificate through tls.Config.GetCertificate and re-reads the key pair when the files
// change; its VerifyConnection refuses client certificates listed by a [Revocations], which re-reads the CRL on
// [Revocations.Reload] or, with [Revocations.Watch], when the file changes.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"strings"

	"github.com/vitalgate/vitalgate/internal/atomicfile"
	"github.com/vitalgate/vitalgate/internal/fileerr"
)

// Names of the files and directories of a PKI directory (docs/design.md#the-pki-directory).
const (
	FileCA               = "ca.crt"
	FileDeviceCA         = "device-ca.crt"
	FileDeviceCAKey      = "device-ca.key"
	FileGatewayCA        = "gateway-ca.crt"
	FileGatewayCAKey     = "gateway-ca.key"
	FileCRL              = "crl.pem"
	FileGateway          = "gateway.crt"
	FileGatewayKey       = "gateway.key"
	FileGatewayClient    = "gateway-client.crt"
	FileGatewayClientKey = "gateway-client.key"
	FileBroker           = "broker.crt"
	FileBrokerKey        = "broker.key"
	FileAppTokenKey      = "app-token.key"
	FileAppTokenPub      = "app-token.pub"
	DevicesDir           = "devices"

	// The files of a device's identity over its lifetime: enrolment, issuing on the gateway, revocation of
	// gateways and app tokens.
	FileIssuingCA     = "issuing-ca.crt"  // the gateway's online intermediate under the device CA
	FileIssuingCAKey  = "issuing-ca.key"  // its key, on the gateway
	FileIssuingCRL    = "issuing-crl.pem" // the issuing CA's revocation list, signed by the gateway
	ManufacturersDir  = "manufacturers"   // NAME.crt: factory-identity issuers accepted for enrolment only
	FileEnroll        = "enroll.yaml"     // the enrolment allow-list: [{serial, id}]
	FileGatewayCRL    = "gateway-crl.pem" // the gateway CA's revocation list, read by the broker
	FileRevokedTokens = "revoked-tokens"  // revoked app-token jti, one a line, read by the broker
	IssuedDir         = "issued"          // ID.pem: the unexpired certificates the issuing CA signed for ID, newest first
	FactoryDir        = "factory"         // for tests and the simulator: manufacturer CA keys and factory identities
	GatewaysDir       = "gateways"        // ID.crt, ID.key: client certificates of further gateways (certs gateway)

	// lockFile is the writer lock of [LockDir].
	lockFile = ".lock"

	// TokenIssuer is the iss claim of the app tokens minted by [MintToken].
	TokenIssuer = "vitalgate-pki"
	// TokenAudience is the aud claim of the app tokens minted by [MintToken].
	TokenAudience = "vitalgate-cloud"
)

// KeyAlg names the algorithm of a generated key pair.
type KeyAlg string

// The supported key algorithms. The zero value "" means [P256].
const (
	P256    KeyAlg = "p256"
	Ed25519 KeyAlg = "ed25519"
)

// ParseKeyAlg returns the KeyAlg named by s ("" is [P256]), or an error naming the accepted values.
func ParseKeyAlg(s string) (KeyAlg, error) {
	switch KeyAlg(s) {
	case "", P256:
		return P256, nil
	case Ed25519:
		return Ed25519, nil
	}
	return "", fmt.Errorf("unknown key algorithm %q (want p256 or ed25519)", s)
}

// ErrExists is returned (wrapped) when a command would replace something that exists: [Init] without Force when
// ca.crt exists, and [IssueDevice] when the device's certificate exists. Callers test it with errors.Is.
var ErrExists = errors.New("exists")

// existsError names the path that exists and how to proceed; it unwraps to [ErrExists].
type existsError struct{ path, hint string }

func (e *existsError) Error() string { return e.path + " exists" + e.hint }
func (e *existsError) Unwrap() error { return ErrExists }

// generateKey returns a fresh private key of the given algorithm.
func generateKey(alg KeyAlg) (crypto.Signer, error) {
	switch alg {
	case "", P256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case Ed25519:
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		return priv, err
	}
	return nil, fmt.Errorf("unknown key algorithm %q (want p256 or ed25519)", string(alg))
}

// randomSerial returns a random positive 128-bit certificate serial number.
func randomSerial() (*big.Int, error) {
	var b [16]byte
	for range 8 { // a zero serial has odds of 2^-128: the bound is for form
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("serial number: %w", err)
		}
		if n := new(big.Int).SetBytes(b[:]); n.Sign() > 0 {
			return n, nil
		}
	}
	return nil, errors.New("serial number: random source returns zeros")
}

// encodeKey returns the PKCS#8 PEM encoding of key.
func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// encodeCert returns the PEM encoding of a DER certificate.
func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// readPEM reads path and returns the DER bytes of every PEM block of type typ (at least one).
func readPEM(path, typ string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fileerr.Wrap("read "+strings.ToLower(typ), path, err)
	}
	var out [][]byte
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == typ {
			out = append(out, b.Bytes)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no PEM %s block", path, typ)
	}
	return out, nil
}

// maxCertsFile bounds how much of a file of certificates [LoadCerts] reads (an issued/ID.pem bundle holds at most
// a few dozen).
const maxCertsFile = 1 << 20

// LoadCerts reads every certificate of a PEM file of at most 1 MiB (at least one); blocks of other types are
// skipped.
func LoadCerts(path string) ([]*x509.Certificate, error) {
	certs, err := readCerts(path)
	if err == nil && len(certs) == 0 {
		return nil, fmt.Errorf("%s: no PEM CERTIFICATE block", path)
	}
	return certs, err
}

// readCerts parses the PEM certificates of the file at path, none included.
func readCerts(path string) ([]*x509.Certificate, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fileerr.Wrap("read certificates", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCertsFile+1))
	if err != nil {
		return nil, fileerr.Wrap("read certificates", path, err)
	}
	if len(data) > maxCertsFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxCertsFile)
	}
	var out []*x509.Certificate
	for rest := data; ; {
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

// LoadCert reads the first certificate of a PEM file.
func LoadCert(path string) (*x509.Certificate, error) {
	ders, err := readPEM(path, "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(ders[0])
	if err != nil {
		return nil, fmt.Errorf("%s: parse certificate: %w", path, err)
	}
	return c, nil
}

// LoadPool returns a pool of every certificate in the given PEM files; each file must hold at least one.
func LoadPool(paths ...string) (*x509.CertPool, error) {
	if len(paths) == 0 {
		return nil, errors.New("certificate pool: no files")
	}
	pool := x509.NewCertPool()
	for _, p := range paths {
		ders, err := readPEM(p, "CERTIFICATE")
		if err != nil {
			return nil, err
		}
		for _, der := range ders {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return nil, fmt.Errorf("%s: parse certificate: %w", p, err)
			}
			pool.AddCert(c)
		}
	}
	return pool, nil
}

// LoadKey reads a PKCS#8 PEM private key ("PRIVATE KEY"): ECDSA or Ed25519.
func LoadKey(path string) (crypto.Signer, error) {
	ders, err := readPEM(path, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(ders[0])
	if err != nil {
		return nil, fmt.Errorf("%s: parse private key: %w", path, err)
	}
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("%s: unsupported private key type %T (want ECDSA or Ed25519)", path, k)
}

// LoadTokenKey reads the public key that checks app tokens (app-token.pub, PKIX PEM): ECDSA P-256 or Ed25519.
func LoadTokenKey(path string) (crypto.PublicKey, error) { return LoadPublicKey(path) }

// writeFile writes data to path through a temporary file in the same directory that is created with perm and
// renamed into place, so the file never exists with another mode and readers never see a partial file. With
// sync, the data reaches the disk before the rename.
func writeFile(path string, data []byte, perm os.FileMode, sync bool) error {
	return atomicfile.Write("write", path, data, perm, sync)
}

// createFile writes a new file at path, created with perm, replacing a leftover file (a pair a crash interrupted).
// Without a rename it costs half the directory operations of [writeFile]: the bulk path uses it, and treats an
// empty file as missing.
func createFile(path string, data []byte, perm os.FileMode) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("write %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// nonEmpty reports whether path is a regular file with content.
func nonEmpty(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Size() > 0
}

// exists reports whether path exists (any error other than "not exist" counts as existing, to fail safe).
func exists(path string) bool {
	_, err := os.Lstat(path)
	return !errors.Is(err, os.ErrNotExist)
}
