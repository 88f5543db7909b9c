package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// The files of signed firmware updates (docs/updates.md): the vendor's update-signing key pair, which signs
// manifests, and the update repository's root of trust (TUF role keys and the initial root metadata).
const (
	FileUpdateSigningKey = "update-signing.key" // signs firmware manifests (offline)
	FileUpdateSigningPub = "update-signing.pub" // checks them: on gateways and devices
	TUFKeysDir           = "tuf-keys"           // root.key, targets.key, snapshot.key, timestamp.key (offline)
	FileTUFRoot          = "tuf-root.json"      // the repository's initial root metadata (1.root.json), trusted by gateways
)

// TUFRoles are the roles of the update repository, each with one key TUFKeysDir/ROLE.key.
var TUFRoles = []string{"root", "targets", "snapshot", "timestamp"}

// LoadPublicKey reads a PKIX PEM public key ("PUBLIC KEY"): ECDSA P-256 or Ed25519.
func LoadPublicKey(path string) (crypto.PublicKey, error) {
	ders, err := readPEM(path, "PUBLIC KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKIXPublicKey(ders[0])
	if err != nil {
		return nil, fmt.Errorf("%s: parse public key: %w", path, err)
	}
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return k, nil
		}
	case ed25519.PublicKey:
		return k, nil
	}
	return nil, fmt.Errorf("%s: unsupported public key (want ECDSA P-256 or Ed25519)", path)
}

// UpdateKeys writes the update-signing key pair and one key per TUF role into dir, which must exist (a PKI
// directory). It refuses to replace any of them ([ErrExists]): a new key would orphan the devices and gateways
// that trust the old one.
func UpdateKeys(dir string, alg KeyAlg) error {
	paths := []string{filepath.Join(dir, FileUpdateSigningKey), filepath.Join(dir, FileUpdateSigningPub)}
	for _, r := range TUFRoles {
		paths = append(paths, filepath.Join(dir, TUFKeysDir, r+".key"))
	}
	for _, p := range paths {
		if exists(p) {
			return &existsError{path: p, hint: " (update keys are made once: devices and gateways trust them)"}
		}
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("PKI directory %s: not a directory (run certs init first)", dir)
	}
	if err := os.MkdirAll(filepath.Join(dir, TUFKeysDir), 0o700); err != nil {
		return fmt.Errorf("update keys: %w", err)
	}
	for i, p := range paths {
		if i == 1 {
			continue // the public key, written with the signing key
		}
		key, err := generateKey(alg)
		if err != nil {
			return err
		}
		pemKey, err := encodeKey(key)
		if err != nil {
			return err
		}
		if err := writeFile(p, pemKey, 0o600, true); err != nil {
			return err
		}
		if i == 0 {
			der, err := x509.MarshalPKIXPublicKey(key.Public())
			if err != nil {
				return errors.New("update keys: marshal public key")
			}
			if err := writeFile(paths[1], pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644, true); err != nil {
				return err
			}
		}
	}
	return nil
}
