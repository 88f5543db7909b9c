// Package release signs and verifies a release's checksum file. A release
// is a directory of binaries and SBOMs with SHA256SUMS (sha256sum's format:
// "HEX  NAME" lines) and SHA256SUMS.sig, an Ed25519 signature of the file's
// bytes in base64, one line. The release key's public half (release.pub,
// PKIX PEM) is what an installer trusts; its private half (release.key,
// PKCS #8 PEM, mode 0600) stays with whoever publishes releases.
package release

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/vitalgate/vitalgate/internal/atomicfile"
)

// File names of a release key pair and of a release's checksums.
const (
	KeyFile = "release.key"
	PubFile = "release.pub"
	Sums    = "SHA256SUMS"
	SumsSig = "SHA256SUMS.sig"
)

// maxSums bounds the checksum file read (a release has a few dozen lines).
const maxSums = 1 << 20

// GenerateKey writes a new key pair to dir (release.key, release.pub); it
// refuses to replace an existing key.
func GenerateKey(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	keyPath := filepath.Join(dir, KeyFile)
	if _, err := os.Stat(keyPath); err == nil {
		return fmt.Errorf("%s exists: a release key is never replaced silently (move it away first)", keyPath)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	p8, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return err
	}
	pk, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return err
	}
	if err := atomicfile.Write("write release key", keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8}), 0o600, true); err != nil {
		return err
	}
	return atomicfile.Write("write release public key", filepath.Join(dir, PubFile), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pk}), 0o644, true)
}

// Sign signs the file at path with the key in keyFile and writes the
// signature to path + ".sig".
func Sign(keyFile, path string) error {
	b, err := os.ReadFile(keyFile)
	if err != nil {
		return err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return fmt.Errorf("%s: not a PEM PRIVATE KEY", keyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return fmt.Errorf("%s: %w", keyFile, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return fmt.Errorf("%s: a %T, not an Ed25519 key", keyFile, k)
	}
	data, err := readBounded(path)
	if err != nil {
		return err
	}
	sig := base64.StdEncoding.EncodeToString(ed25519.Sign(priv, data)) + "\n"
	return atomicfile.Write("write signature", path+".sig", []byte(sig), 0o644, true)
}

// LoadPublic reads an Ed25519 public key (PKIX PEM).
func LoadPublic(pubFile string) (ed25519.PublicKey, error) {
	b, err := os.ReadFile(pubFile)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("%s: not a PEM PUBLIC KEY", pubFile)
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", pubFile, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%s: a %T, not an Ed25519 key", pubFile, k)
	}
	return pub, nil
}

// Verify checks the signature path+".sig" of the file at path with pub,
// then, for a checksum file, every file it lists (in its directory) against
// its SHA-256. It returns the names checked. A listed file that is absent
// is an error unless ignoreMissing (an installer may download only the
// binary it needs).
func Verify(pub ed25519.PublicKey, path string, ignoreMissing bool) ([]string, error) {
	data, err := readBounded(path)
	if err != nil {
		return nil, err
	}
	sigText, err := os.ReadFile(path + ".sig")
	if err != nil {
		return nil, err
	}
	sig, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(sigText)))
	if err != nil || len(sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%s.sig: not a base64 Ed25519 signature", path)
	}
	if !ed25519.Verify(pub, data, sig) {
		return nil, fmt.Errorf("%s: the signature does not verify with this release key: do not install", path)
	}
	return checkSums(filepath.Dir(path), data, ignoreMissing)
}

// checkSums checks the files a SHA256SUMS lists.
func checkSums(dir string, sums []byte, ignoreMissing bool) ([]string, error) {
	var checked []string
	sc := bufio.NewScanner(bytes.NewReader(sums))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		want, name, ok := strings.Cut(line, "  ")
		name = strings.TrimPrefix(name, "*")
		if !ok || len(want) != 64 || name == "" || filepath.Base(name) != name {
			return checked, fmt.Errorf("%s line %d: not \"SHA256  NAME\"", Sums, n)
		}
		f, err := os.Open(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) && ignoreMissing {
			continue
		}
		if err != nil {
			return checked, err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return checked, err
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != strings.ToLower(want) {
			return checked, fmt.Errorf("%s: SHA-256 %s, the signed %s says %s: do not install", name, got, Sums, want)
		}
		checked = append(checked, name)
	}
	return checked, sc.Err()
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSums+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxSums {
		return nil, fmt.Errorf("%s: over %d bytes, not a checksum file", path, maxSums)
	}
	return b, nil
}
