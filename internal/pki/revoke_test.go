package pki

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRevokedTokensFile(t *testing.T) {
	dir := newPKI(t, InitOptions{})
	path := filepath.Join(dir, FileRevokedTokens)
	ids, err := ReadRevokedTokens(path)
	if err != nil || len(ids) != 0 {
		t.Fatalf("fresh file: %v %v", ids, err)
	}
	tok, err := MintToken(dir, "alice", []string{"site1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	jti, err := TokenIDOf(dir, tok)
	if err != nil {
		t.Fatal(err)
	}
	// Concurrent revocations under the directory lock: none is lost.
	var wg sync.WaitGroup
	extra := []string{"a1", "b2", "c3", "d4", "e5", "f6", "g7", "h8"}
	for _, id := range append(extra, jti, jti) {
		wg.Go(func() {
			if err := RevokeToken(dir, id); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	ids, err = ReadRevokedTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != len(extra)+1 {
		t.Fatalf("%d IDs on the list, want %d: %v", len(ids), len(extra)+1, ids)
	}
	if _, ok := ids[jti]; !ok {
		t.Fatal("revoked token not on the list")
	}
	data, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(data), "# ") || strings.Count(string(data), jti) != 1 {
		t.Fatalf("file:\n%s", data)
	}

	for _, bad := range []string{"", "two words", "has#hash", strings.Repeat("x", 129)} {
		if err := RevokeToken(dir, bad); err == nil {
			t.Errorf("revoked invalid ID %q", bad)
		}
	}
	if _, err := TokenIDOf(dir, tok[:len(tok)-4]+"AAAA"); err == nil {
		t.Error("read the jti of a tampered token")
	}
	// A line that is not an ID, or a file over the bound, is an error (the broker keeps its list).
	if err := os.WriteFile(path, []byte("ok1\nnot an id\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadRevokedTokens(path); err == nil || !strings.Contains(err.Error(), ":2:") {
		t.Errorf("bad line: %v", err)
	}
	if err := RevokeToken(dir, "x1"); err == nil {
		t.Error("appended to a file that does not parse")
	}
	if err := os.WriteFile(path, []byte(strings.Repeat("0123456789abcdef0123456789abcde\n", MaxRevokedTokensSize/32+1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadRevokedTokens(path); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized file: %v", err)
	}
	if ids, err := ReadRevokedTokens(filepath.Join(dir, "missing")); err != nil || len(ids) != 0 {
		t.Errorf("missing file: %v %v", ids, err)
	}
}

func TestIssueAndRevokeGateway(t *testing.T) {
	dir := newPKI(t, InitOptions{})
	if err := IssueGateway(dir, "gw2", "site2", Ed25519); err != nil {
		t.Fatal(err)
	}
	crt, key := GatewayPaths(dir, "gw2")
	gw2 := mustCert(t, crt)
	if site, id := ParseSiteAndID(gw2); site != "site2" || id != "gw2" {
		t.Fatalf("gw2 certificate names %s/%s", site, id)
	}
	if _, err := gw2.Verify(x509.VerifyOptions{Roots: mustPool(t, filepath.Join(dir, FileGatewayCA)),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("gw2 does not chain to the gateway CA: %v", err)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	for _, tc := range []struct{ id, site string }{{"gw2", "site2"}, {"gw1", "site1"}, {"..", "site1"}, {"gw3", "a/b"}} {
		if err := IssueGateway(dir, tc.id, tc.site, P256); err == nil {
			t.Errorf("issued gateway %s/%s", tc.site, tc.id)
		}
	}

	gw1 := mustCert(t, filepath.Join(dir, FileGatewayClient))
	rev, err := NewRevocations(filepath.Join(dir, FileGatewayCRL), mustCert(t, filepath.Join(dir, FileGatewayCA)))
	if err != nil {
		t.Fatal(err)
	}
	if err := RevokeGateway(dir, "gw2"); err != nil {
		t.Fatal(err)
	}
	if err := rev.Reload(); err != nil {
		t.Fatal(err)
	}
	if !rev.IsRevoked(gw2.SerialNumber) || rev.IsRevoked(gw1.SerialNumber) {
		t.Fatal("gw2 not revoked, or gw1 revoked with it")
	}
	if err := RevokeGateway(dir, "gw1"); err != nil {
		t.Fatal(err)
	}
	if err := RevokeGateway(dir, "gw1"); err != nil { // twice: unchanged
		t.Fatal(err)
	}
	if err := rev.Reload(); err != nil {
		t.Fatal(err)
	}
	if !rev.IsRevoked(gw1.SerialNumber) || !rev.IsRevoked(gw2.SerialNumber) || rev.Len() != 2 || rev.Number().Int64() != 3 {
		t.Fatalf("after gw1: %d revoked, CRL number %v", rev.Len(), rev.Number())
	}
	if err := RevokeGateway(dir, "gw9"); err == nil || !strings.Contains(err.Error(), "no certificate") {
		t.Errorf("unknown gateway: %v", err)
	}
	// A list signed by another CA is refused, never replaced.
	other := newPKI(t, InitOptions{})
	data, _ := os.ReadFile(filepath.Join(other, FileGatewayCRL))
	if err := os.WriteFile(filepath.Join(dir, FileGatewayCRL), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := RevokeGateway(dir, "gw2"); err == nil || !strings.Contains(err.Error(), "not signed") {
		t.Errorf("CRL of another CA: %v", err)
	}
}
