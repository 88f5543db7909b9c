package release

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSignVerify(t *testing.T) {
	keys, rel := t.TempDir(), t.TempDir()
	if err := GenerateKey(keys); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(keys, KeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("release.key: %v %v", fi, err)
	}
	if err := GenerateKey(keys); err == nil || !strings.Contains(err.Error(), "never replaced") {
		t.Fatalf("second GenerateKey: %v", err)
	}
	var sums strings.Builder
	for name, body := range map[string]string{"gateway-linux-arm64": "binary", "gateway-linux-arm64.cdx.json": "{}"} {
		os.WriteFile(filepath.Join(rel, name), []byte(body), 0o644)
		h := sha256.Sum256([]byte(body))
		sums.WriteString(hex.EncodeToString(h[:]) + "  " + name + "\n")
	}
	sumsPath := filepath.Join(rel, Sums)
	os.WriteFile(sumsPath, []byte(sums.String()), 0o644)
	if err := Sign(filepath.Join(keys, KeyFile), sumsPath); err != nil {
		t.Fatal(err)
	}
	pub, err := LoadPublic(filepath.Join(keys, PubFile))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Verify(pub, sumsPath, false); err != nil || len(got) != 2 {
		t.Fatalf("Verify: %v %v", got, err)
	}

	// A changed binary, a missing one, a changed checksum file, another key.
	os.WriteFile(filepath.Join(rel, "gateway-linux-arm64"), []byte("binarY"), 0o644)
	if _, err := Verify(pub, sumsPath, false); err == nil || !strings.Contains(err.Error(), "gateway-linux-arm64: SHA-256") {
		t.Fatalf("changed binary: %v", err)
	}
	os.Remove(filepath.Join(rel, "gateway-linux-arm64"))
	if _, err := Verify(pub, sumsPath, false); err == nil {
		t.Fatal("missing binary verified")
	}
	if got, err := Verify(pub, sumsPath, true); err != nil || len(got) != 1 {
		t.Fatalf("missing binary ignored: %v %v", got, err)
	}
	os.WriteFile(sumsPath, []byte(strings.Replace(sums.String(), "a", "b", 1)), 0o644)
	if _, err := Verify(pub, sumsPath, true); err == nil || !strings.Contains(err.Error(), "signature does not verify") {
		t.Fatalf("changed SHA256SUMS: %v", err)
	}
	other := t.TempDir()
	GenerateKey(other)
	os.WriteFile(sumsPath, []byte(sums.String()), 0o644)
	pub2, _ := LoadPublic(filepath.Join(other, PubFile))
	if _, err := Verify(pub2, sumsPath, true); err == nil || !strings.Contains(err.Error(), "signature does not verify") {
		t.Fatalf("another key: %v", err)
	}
}
