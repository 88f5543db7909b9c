package main

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/cli/clitest"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/update"
)

// TestMain lets the tests run the real command (clitest.Run).
func TestMain(m *testing.M) { clitest.Main(m, "CERTS_TEST_MAIN", main) }

// certs runs the test binary as the certs command and returns its exit
// status, stdout and stderr.
func certs(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return clitest.Run(t, "CERTS_TEST_MAIN", args...)
}

func TestCLI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	cfg := filepath.Join(t.TempDir(), "devices.yaml")
	if err := os.WriteFile(cfg, []byte("dir: "+dir+"\ncount: 5\nprefix: cfg\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	initDir := filepath.Join(t.TempDir(), "pki2")
	initCfg := filepath.Join(t.TempDir(), "init.yaml")
	if err := os.WriteFile(initCfg, []byte("dir: "+initDir+"\nhosts: [gw.example, 192.0.2.7]\nkey: ed25519\nforce: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	badCfg := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(badCfg, []byte("dir: "+dir+"\ncolour: blue\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string // substring
		wantStderr string // exact line ("" = empty stderr)
	}{
		{"no command", nil, 2, "", "*"},
		{"help", []string{"--help"}, 0, "Commands:", ""},
		{"unknown command", []string{"frobnicate"}, 2, "", `certs: unknown command "frobnicate" (want init, device, devices, revoke, factory, manufacturer, renew-issuing, token, gateway, update-init, firmware, release-key, sign-release, verify-release, update-refresh; see certs --help)`},
		{"init help", []string{"init", "--help"}, 0, "--force", ""},
		{"init help placeholder", []string{"init", "--help"}, 0, "-dir directory\n    \tPKI directory to write\n", ""},
		{"device help", []string{"device", "-h"}, 0, "-days", ""},
		{"init without dir", []string{"init"}, 2, "", "certs: init: --dir is required (see certs init --help)"},
		{"init bad flag", []string{"init", "--dir", dir, "--colour", "blue"}, 2, "", "certs: init: flag provided but not defined: -colour"},
		{"init bad key", []string{"init", "--dir", dir, "--key", "rsa"}, 2, "", `certs: init: unknown key algorithm "rsa" (want p256 or ed25519)`},
		{"init extra argument", []string{"init", "--dir", dir, "extra"}, 2, "", `certs: init: unexpected argument "extra"`},
		{"init", []string{"init", "--dir", dir, "--site", "north", "--gateway-id", "gw9", "--hosts", "gw.local,10.1.2.3"}, 0, "site north, gateway gw9", ""},
		{"init again", []string{"init", "--dir", dir}, 1, "", "certs: init: " + filepath.Join(dir, "ca.crt") + " exists (use --force to replace the CA)"},
		{"init from config", []string{"init", "--config", initCfg}, 0, "ed25519 keys", ""},
		{"init force", []string{"init", "--dir", dir, "--force", "--site", "north", "--gateway-id", "gw9"}, 0, "wrote", ""},
		{"device", []string{"device", "--dir", dir, "--id", "pump-1", "--days", "30"}, 0, "pump-1.crt", ""},
		{"device ed25519", []string{"device", "--dir", dir, "--id", "pump-2", "--key", "ed25519"}, 0, "pump-2.key", ""},
		{"device exists", []string{"device", "--dir", dir, "--id", "pump-1"}, 1, "", "*exists"},
		{"device bad id", []string{"device", "--dir", dir, "--id", "a/b"}, 1, "", `certs: device: invalid device ID "a/b" (want [A-Za-z0-9._-]{1,64}, not . or ..)`},
		// ".." would write pki.crt and pki.key beside the PKI directory.
		{"device id dot-dot", []string{"device", "--dir", dir, "--id", ".."}, 1, "", `certs: device: invalid device ID ".." (want [A-Za-z0-9._-]{1,64}, not . or ..)`},
		{"device id dot", []string{"device", "--dir", dir, "--id", "."}, 1, "", `certs: device: invalid device ID "." (want [A-Za-z0-9._-]{1,64}, not . or ..)`},
		{"device bad days", []string{"device", "--dir", dir, "--id", "x", "--days", "0"}, 2, "", "certs: device: --days 0: want at least 1"},
		{"device without id", []string{"device", "--dir", dir}, 2, "", "certs: device: --id is required (see certs device --help)"},
		{"devices", []string{"devices", "--dir", dir, "--count", "12", "--prefix", "bed"}, 0, "12 issued, 0 existed", ""},
		{"devices again", []string{"devices", "--dir", dir, "--count", "13", "--prefix", "bed"}, 0, "1 issued, 12 existed", ""},
		{"devices from config", []string{"devices", "--config", cfg}, 0, "cfg-00005: 5 issued", ""},
		{"devices flag beats config", []string{"devices", "--config", cfg, "--count", "6"}, 0, "1 issued, 5 existed", ""},
		{"devices bad config key", []string{"devices", "--config", badCfg}, 2, "", "certs: devices: config " + badCfg + `: unknown key "colour" (valid keys: count, dir, key, prefix)`},
		{"devices missing config", []string{"devices", "--config", "/nonexistent.yaml"}, 2, "", "*no such file"},
		{"devices bad count", []string{"devices", "--dir", dir, "--count", "many"}, 2, "", "*invalid value"},
		{"devices no CA", []string{"devices", "--dir", t.TempDir(), "--count", "1"}, 1, "", "*device CA"},
		{"revoke", []string{"revoke", "--dir", dir, "--id", "pump-1"}, 0, "revoked pump-1: its certificate in " + filepath.Join(dir, "crl.pem") + "\n", ""},
		{"revoke unknown", []string{"revoke", "--dir", dir, "--id", "ghost"}, 1, "", "certs: revoke: device ghost: no certificate " + filepath.Join(dir, "devices", "ghost.crt") +
			" and none issued at enrolment (" + filepath.Join(dir, "issued", "ghost.pem") + ")"},
		{"factory help", []string{"factory", "--help"}, 0, "-manufacturer NAME", ""},
		{"factory", []string{"factory", "--dir", dir, "--count", "3", "--manufacturer", "globex", "--prefix", "fx"}, 0,
			"3 factory identities of globex (GLOBEX-00000001..GLOBEX-00000003) for fx-00001..fx-00003, listed in " + filepath.Join(dir, "enroll.yaml"), ""},
		{"factory grows", []string{"factory", "--dir", dir, "--count", "4", "--manufacturer", "globex", "--prefix", "fx", "--key", "ed25519"}, 0,
			"(GLOBEX-00000001..GLOBEX-00000004) for fx-00001..fx-00004", ""},
		{"factory without count", []string{"factory", "--dir", dir}, 2, "", "certs: factory: --count is required (see certs factory --help)"},
		{"factory bad days", []string{"factory", "--dir", dir, "--count", "1", "--days", "0"}, 2, "", "certs: factory: --days 0: want at least 1"},
		{"factory bad manufacturer", []string{"factory", "--dir", dir, "--count", "1", "--manufacturer", "a b"}, 1, "",
			`certs: factory: invalid manufacturer name "a b" (want [A-Za-z0-9._-]{1,64}, not . or ..)`},
		{"manufacturer", []string{"manufacturer", "--dir", dir, "--name", "initech", "--key", "ed25519"}, 0, filepath.Join(dir, "manufacturers", "initech.crt"), ""},
		{"manufacturer without name", []string{"manufacturer", "--dir", dir}, 2, "", "certs: manufacturer: --name is required (see certs manufacturer --help)"},
		{"renew-issuing", []string{"renew-issuing", "--dir", dir, "--days", "30"}, 0, "copy it to the gateway", ""},
		{"renew-issuing bad days", []string{"renew-issuing", "--dir", dir, "--days", "-3"}, 2, "", "certs: renew-issuing: --days -3: want at least 1"},
		{"renew-issuing without device CA key", []string{"renew-issuing", "--dir", t.TempDir()}, 1, "", "*where the device CA's key lives"},
		{"token", []string{"token", "--dir", dir, "--sub", "nurse", "--sites", "north,south", "--ttl", "5m"}, 0, "eyJ", "*"}, // the jti on stderr (TestRevokeCommands)
		{"token without sites", []string{"token", "--dir", dir, "--sub", "nurse"}, 2, "", "certs: token: --sites is required (see certs token --help)"},
		{"token bad ttl", []string{"token", "--dir", dir, "--sub", "n", "--sites", "a", "--ttl", "-1h"}, 1, "", "certs: token: ttl -1h0m0s is not positive"},
		{"token bad role", []string{"token", "--dir", dir, "--sub", "n", "--sites", "a", "--role", "admin"}, 1, "", `certs: token: invalid role "admin" (want clinician or operator)`},
		{"token exporter role", []string{"token", "--dir", dir, "--sub", "n", "--sites", "a", "--role", "exporter"}, 1, "", `certs: token: invalid role "exporter" (want clinician or operator)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := certs(t, tt.args...)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.wantCode, stdout, stderr)
			}
			if !strings.Contains(stdout, tt.wantStdout) {
				t.Errorf("stdout %q does not contain %q", stdout, tt.wantStdout)
			}
			switch {
			case tt.wantStderr == "":
				if stderr != "" {
					t.Errorf("stderr %q, want none", stderr)
				}
			case tt.wantStderr == "*": // usage text
				if stderr == "" {
					t.Error("no usage on stderr")
				}
			case strings.HasPrefix(tt.wantStderr, "*"):
				if strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "certs: ") || !strings.Contains(stderr, tt.wantStderr[1:]) {
					t.Errorf("stderr %q: want one line containing %q", stderr, tt.wantStderr[1:])
				}
			default:
				if stderr != tt.wantStderr+"\n" {
					t.Errorf("stderr %q, want %q", stderr, tt.wantStderr)
				}
			}
		})
	}

	// Nothing was written outside the PKI directory's devices/.
	for _, f := range []string{filepath.Join(filepath.Dir(dir), "pki.crt"), filepath.Join(filepath.Dir(dir), "pki.key"),
		filepath.Join(dir, "devices.crt"), filepath.Join(dir, "devices.key")} {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s written", f)
		}
	}

	// The files the commands wrote are what the library reads.
	site, id := pki.ParseSiteAndID(mustLoad(t, filepath.Join(dir, pki.FileGatewayClient)))
	if site != "north" || id != "gw9" {
		t.Errorf("gateway client site %q id %q", site, id)
	}
	if gw := mustLoad(t, filepath.Join(initDir, pki.FileGateway)); gw.VerifyHostname("gw.example") != nil ||
		gw.VerifyHostname("192.0.2.7") != nil || gw.PublicKeyAlgorithm != x509.Ed25519 {
		t.Errorf("init --config: SANs %v %v, key %v", gw.DNSNames, gw.IPAddresses, gw.PublicKeyAlgorithm)
	}
	rev, err := pki.NewRevocations(filepath.Join(dir, pki.FileCRL), mustLoad(t, filepath.Join(dir, pki.FileDeviceCA)))
	if err != nil {
		t.Fatal(err)
	}
	crt, _ := pki.DevicePaths(dir, "pump-1")
	if !rev.IsRevoked(mustLoad(t, crt).SerialNumber) {
		t.Error("pump-1 not on the CRL after certs revoke")
	}
	allow, err := pki.ReadAllowList(filepath.Join(dir, pki.FileEnroll))
	if err != nil || len(allow) != 4 || allow[3] != (pki.AllowEntry{Serial: "GLOBEX-00000004", ID: "fx-00004", Manufacturer: "globex"}) {
		t.Errorf("allow-list after certs factory: %v, %v", allow, err)
	}
	if c := mustLoad(t, filepath.Join(dir, "factory", "fx-00004.crt")); c.PublicKeyAlgorithm != x509.Ed25519 {
		t.Errorf("factory --key ed25519 wrote a %v key", c.PublicKeyAlgorithm)
	}
	if c := mustLoad(t, filepath.Join(dir, pki.FileIssuingCA)); time.Until(c.NotAfter) > 31*24*time.Hour {
		t.Errorf("renew-issuing --days 30: valid until %v", c.NotAfter)
	}
	_, stdout, _ := certs(t, "token", "--dir", dir, "--sub", "nurse", "--sites", "north")
	pub, err := pki.LoadTokenKey(filepath.Join(dir, pki.FileAppTokenPub))
	if err != nil {
		t.Fatal(err)
	}
	claims, err := pki.VerifyToken(pub, strings.TrimSpace(stdout))
	if err != nil || claims.Subject != "nurse" || len(claims.Sites) != 1 || claims.Role != "" {
		t.Fatalf("token claims %+v, %v", claims, err)
	}
	_, stdout, _ = certs(t, "token", "--dir", dir, "--sub", "ops", "--sites", "north", "--role", "operator")
	if claims, err = pki.VerifyToken(pub, strings.TrimSpace(stdout)); err != nil || claims.Role != pki.RoleOperator {
		t.Fatalf("operator token claims %+v, %v", claims, err)
	}
}

// TestRevokeCommands: certs token prints the jti that certs revoke --jti takes; revoke --token reads it from the
// checked token; certs gateway issues a further gateway and revoke --gateway lists it on gateway-crl.pem.
func TestRevokeCommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if code, _, stderr := certs(t, "init", "--dir", dir); code != 0 {
		t.Fatal(stderr)
	}
	code, _, stderr := certs(t, "token", "--dir", dir, "--sub", "nurse", "--sites", "site1")
	jti, ok := strings.CutPrefix(strings.TrimSpace(stderr), "jti ")
	if code != 0 || !ok || len(jti) != 32 {
		t.Fatalf("token: exit %d, stderr %q", code, stderr)
	}
	_, tok2, _ := certs(t, "token", "--dir", dir, "--sub", "other", "--sites", "site1")
	for _, tc := range []struct {
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{[]string{"revoke", "--dir", dir, "--jti", jti}, 0, "revoked token " + jti, ""},
		{[]string{"revoke", "--dir", dir, "--token", strings.TrimSpace(tok2)}, 0, "revoked token ", ""},
		{[]string{"revoke", "--dir", dir, "--token", "not.a.jwt"}, 1, "", "invalid token"},
		{[]string{"revoke", "--dir", dir, "--jti", "has space"}, 1, "", "invalid token ID"},
		{[]string{"revoke", "--dir", dir}, 2, "", "give exactly one of --id, --gateway, --jti and --token"},
		{[]string{"revoke", "--dir", dir, "--jti", jti, "--gateway", "gw1"}, 2, "", "give exactly one"},
		{[]string{"gateway", "--dir", dir, "--id", "gw2", "--site", "site2"}, 0, filepath.Join("gateways", "gw2.crt"), ""},
		{[]string{"gateway", "--dir", dir, "--id", "gw2", "--site", "site2"}, 1, "", "exists"},
		{[]string{"gateway", "--dir", dir, "--id", "gw3"}, 2, "", "--site is required"},
		{[]string{"revoke", "--dir", dir, "--gateway", "gw2"}, 0, "revoked gateway gw2", ""},
		{[]string{"revoke", "--dir", dir, "--gateway", "gw1"}, 0, "revoked gateway gw1", ""},
		{[]string{"revoke", "--dir", dir, "--gateway", "ghost"}, 1, "", "gateway ghost: no certificate"},
	} {
		code, stdout, stderr := certs(t, tc.args...)
		if code != tc.wantCode || !strings.Contains(stdout, tc.wantStdout) || !strings.Contains(stderr, tc.wantStderr) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", tc.args, code, stdout, stderr)
		}
	}
	ids, err := pki.ReadRevokedTokens(filepath.Join(dir, pki.FileRevokedTokens))
	if err != nil || len(ids) != 2 {
		t.Fatalf("revoked-tokens: %v %v", ids, err)
	}
	if _, ok := ids[jti]; !ok {
		t.Error("the jti certs token printed is not on revoked-tokens")
	}
	rev, err := pki.NewRevocations(filepath.Join(dir, pki.FileGatewayCRL), mustLoad(t, filepath.Join(dir, pki.FileGatewayCA)))
	if err != nil {
		t.Fatal(err)
	}
	gw2, _ := pki.GatewayPaths(dir, "gw2")
	for _, f := range []string{gw2, filepath.Join(dir, pki.FileGatewayClient)} {
		if !rev.IsRevoked(mustLoad(t, f).SerialNumber) {
			t.Errorf("%s not on gateway-crl.pem", f)
		}
	}
	if _, stdout, _ := certs(t, "token", "--help"); !strings.Contains(stdout, "jti") {
		t.Errorf("token --help does not mention the jti: %s", stdout)
	}
}

func mustLoad(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, err := pki.LoadCert(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestUpdateCommands runs update-init, firmware and update-refresh: the files they write, the manifest that
// verifies with update-signing.pub and matches the image, and what they refuse.
func TestUpdateCommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	repo := filepath.Join(t.TempDir(), "repo")
	if code, _, stderr := certs(t, "init", "--dir", dir); code != 0 {
		t.Fatal(stderr)
	}
	image := filepath.Join(t.TempDir(), "oxi.bin")
	if err := os.WriteFile(image, []byte("firmware 1.3.0"), 0o644); err != nil {
		t.Fatal(err)
	}
	fw := func(version, seq string, extra ...string) []string {
		return append([]string{"firmware", "--dir", dir, "--repo", repo, "--image", image, "--model", "oxi-1",
			"--version", version, "--seq", seq}, extra...)
	}
	for _, tt := range []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string // substring
	}{
		{"firmware before init", fw("1.0.0", "1"), 1, "", "update-signing.key"},
		{"update-init", []string{"update-init", "--dir", dir, "--repo", repo, "--key", "ed25519"}, 0, "(ed25519 keys); repository " + repo, ""},
		{"update-init again", []string{"update-init", "--dir", dir, "--repo", repo}, 1, "", "root metadata exists"},
		{"update-init keys exist", []string{"update-init", "--dir", dir, "--repo", filepath.Join(t.TempDir(), "r2")}, 1, "", "update-signing.key exists"},
		{"firmware", fw("1.3.0", "4", "--min-battery", "30", "--targets", "oxi-00001,oxi-00002"), 0,
			"published oxi-1 1.3.0 (seq 4, 14 bytes): oxi-1/1.3.0/image.bin, oxi-1/1.3.0/manifest.cose", ""},
		{"firmware again", fw("1.3.0", "5"), 1, "", "already published"},
		{"firmware rollback", fw("1.4.0", "4"), 1, "", "not above seq 4"},
		{"firmware without seq", fw("1.4.0", "0"), 2, "", "--seq is required"},
		{"firmware bad battery", fw("1.4.0", "5", "--min-battery", "101"), 2, "", "want 0..100"},
		{"firmware bad target", fw("1.4.0", "5", "--targets", "a/b"), 1, "", "not a device ID"},
		{"firmware bad version", fw("v1.4", "5"), 1, "", "semantic version"},
		{"update-refresh", []string{"update-refresh", "--dir", dir, "--repo", repo}, 0, "the timestamp is valid for 24h0m0s", ""},
	} {
		code, stdout, stderr := certs(t, tt.args...)
		if code != tt.wantCode || !strings.Contains(stdout, tt.wantStdout) || !strings.Contains(stderr, tt.wantStderr) ||
			(tt.wantStderr == "") != (stderr == "") {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want %d, %q, %q", tt.name, code, stdout, stderr, tt.wantCode, tt.wantStdout, tt.wantStderr)
		}
	}
	root, _ := os.ReadFile(filepath.Join(dir, pki.FileTUFRoot))
	first, _ := os.ReadFile(filepath.Join(repo, "metadata", "1.root.json"))
	if len(root) == 0 || string(root) != string(first) {
		t.Error("tuf-root.json is not the repository's 1.root.json")
	}
	for _, f := range []string{pki.FileUpdateSigningKey, "tuf-keys/root.key", "tuf-keys/timestamp.key"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v", f, err)
		}
	}
	pub, err := update.LoadPublicKey(filepath.Join(dir, pki.FileUpdateSigningPub))
	if err != nil {
		t.Fatal(err)
	}
	cose, _ := os.ReadFile(filepath.Join(repo, "targets", "oxi-1", "1.3.0", "manifest.cose"))
	img, _ := os.ReadFile(filepath.Join(repo, "targets", "oxi-1", "1.3.0", "image.bin"))
	m, err := update.Parse(cose, pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := update.CheckImage(m, img); err != nil || m.Seq != 4 || m.MinBattery != 30 || len(m.Targets) != 2 || m.Vendor != "VitalGate" {
		t.Errorf("manifest %+v: %v", m, err)
	}
	if d := time.Until(m.Expiry()); d < 89*24*time.Hour || d > 90*24*time.Hour {
		t.Errorf("manifest expires in %s, want 90 days", d)
	}
}

func TestVersion(t *testing.T) {
	code, out, errOut := certs(t, "--version")
	if code != 0 || !strings.HasPrefix(out, "certs ") || !strings.Contains(out, " commit ") || !strings.Contains(out, runtime.Version()) {
		t.Fatalf("certs --version: %d\n%s\n%s", code, out, errOut)
	}
}

// The release commands: a key, a signed checksum file, verified; a changed
// file is refused.
func TestReleaseCommands(t *testing.T) {
	keys, rel := t.TempDir(), t.TempDir()
	if code, out, errOut := certs(t, "release-key", "--dir", keys); code != 0 || !strings.Contains(out, "release.pub") {
		t.Fatalf("release-key: %d %s %s", code, out, errOut)
	}
	os.WriteFile(filepath.Join(rel, "gateway-linux-amd64"), []byte("bin"), 0o755)
	sums := filepath.Join(rel, "SHA256SUMS")
	os.WriteFile(sums, []byte("5e2e35ef8b1b5d5c8f0b6e3c0b5b1c5ad0e0c1f3b44cd4ae1d2a0e6b46b6e0e6  gateway-linux-amd64\n"), 0o644)
	if code, out, errOut := certs(t, "sign-release", "--key", filepath.Join(keys, "release.key"), "--file", sums); code != 0 {
		t.Fatalf("sign-release: %d %s %s", code, out, errOut)
	}
	code, _, errOut := certs(t, "verify-release", "--pub", filepath.Join(keys, "release.pub"), "--file", sums)
	if code != 1 || !strings.Contains(errOut, "gateway-linux-amd64: SHA-256") {
		t.Fatalf("verify-release of a wrong checksum: %d %s", code, errOut)
	}
	os.WriteFile(sums, []byte("51a1f05af85e342e3c849b47d387086476282d5f50dc240c19216d6edfb1eb5a  gateway-linux-amd64\n"), 0o644)
	if code, _, errOut := certs(t, "verify-release", "--pub", filepath.Join(keys, "release.pub"), "--file", sums); code != 1 || !strings.Contains(errOut, "signature does not verify") {
		t.Fatalf("verify-release of a checksum file changed after signing: %d %s", code, errOut)
	}
	certs(t, "sign-release", "--key", filepath.Join(keys, "release.key"), "--file", sums)
	if code, out, errOut := certs(t, "verify-release", "--pub", filepath.Join(keys, "release.pub"), "--file", sums); code != 0 ||
		!strings.Contains(out, "gateway-linux-amd64: OK") || !strings.Contains(out, "signature good, 1 files checked") {
		t.Fatalf("verify-release: %d %s %s", code, out, errOut)
	}
}
