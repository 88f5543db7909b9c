package pki

import (
	"crypto"
	"crypto/x509"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// newPKI writes a fresh PKI directory.
func newPKI(t testing.TB, o InitOptions) string {
	t.Helper()
	dir := t.TempDir()
	if err := Init(dir, o); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return dir
}

func mustCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	c, err := LoadCert(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustPool(t testing.TB, paths ...string) *x509.CertPool {
	t.Helper()
	p, err := LoadPool(paths...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestChains verifies every certificate Init and IssueDevice write against the pools the programs use, and that
// the device and gateway hierarchies do not accept each other's certificates.
func TestChains(t *testing.T) {
	for _, alg := range []KeyAlg{P256, Ed25519} {
		t.Run(string(alg), func(t *testing.T) {
			dir := newPKI(t, InitOptions{Site: "north", GatewayID: "gw7", Hosts: []string{"gw.example", "10.0.0.7"}, Key: alg})
			if err := IssueDevice(dir, "pump-1", alg, 0); err != nil {
				t.Fatal(err)
			}
			dev, _ := DevicePaths(dir, "pump-1")
			p := func(name string) string { return filepath.Join(dir, name) }
			client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
			server := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			tests := []struct {
				name          string
				leaf          string
				roots         []string
				intermediates []string
				usage         []x509.ExtKeyUsage
				dnsName       string
				wantErr       bool
			}{
				{"device against device CA", dev, []string{FileDeviceCA}, nil, client, "", false},
				{"device against root via device CA", dev, []string{FileCA}, []string{FileDeviceCA}, client, "", false},
				{"device against gateway CA", dev, []string{FileGatewayCA}, nil, client, "", true},
				{"device as a server", dev, []string{FileCA}, []string{FileDeviceCA}, server, "", true},
				{"gateway client against gateway CA", p(FileGatewayClient), []string{FileGatewayCA}, nil, client, "", false},
				{"gateway client against device CA", p(FileGatewayClient), []string{FileDeviceCA}, nil, client, "", true},
				{"gateway server localhost", p(FileGateway), []string{FileCA}, nil, server, "localhost", false},
				{"gateway server 127.0.0.1", p(FileGateway), []string{FileCA}, nil, server, "127.0.0.1", false},
				{"gateway server ::1", p(FileGateway), []string{FileCA}, nil, server, "::1", false},
				{"gateway server extra host", p(FileGateway), []string{FileCA}, nil, server, "gw.example", false},
				{"gateway server extra IP", p(FileGateway), []string{FileCA}, nil, server, "10.0.0.7", false},
				{"gateway server wrong host", p(FileGateway), []string{FileCA}, nil, server, "evil.example", true},
				{"gateway server as a client", p(FileGateway), []string{FileCA}, nil, client, "", true},
				{"broker server localhost", p(FileBroker), []string{FileCA}, nil, server, "localhost", false},
				{"broker server 127.0.0.1", p(FileBroker), []string{FileCA}, nil, server, "127.0.0.1", false},
				{"broker server against device CA", p(FileBroker), []string{FileDeviceCA}, nil, server, "localhost", true},
				{"device CA against root", p(FileDeviceCA), []string{FileCA}, nil, client, "", false},
				{"gateway CA against root", p(FileGatewayCA), []string{FileCA}, nil, client, "", false},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					var roots, inter []string
					for _, r := range tt.roots {
						roots = append(roots, p(r))
					}
					for _, r := range tt.intermediates {
						inter = append(inter, p(r))
					}
					opts := x509.VerifyOptions{Roots: mustPool(t, roots...), KeyUsages: tt.usage, DNSName: tt.dnsName}
					if len(inter) > 0 {
						opts.Intermediates = mustPool(t, inter...)
					}
					_, err := mustCert(t, tt.leaf).Verify(opts)
					if (err != nil) != tt.wantErr {
						t.Fatalf("Verify error = %v, wantErr %v", err, tt.wantErr)
					}
				})
			}
			// Names and lifetimes.
			gc := mustCert(t, p(FileGatewayClient))
			if site, id := ParseSiteAndID(gc); site != "north" || id != "gw7" {
				t.Errorf("ParseSiteAndID = %q, %q", site, id)
			}
			if d := mustCert(t, dev); d.Subject.CommonName != "pump-1" || d.SerialNumber.BitLen() > 128 || d.SerialNumber.BitLen() < 64 {
				t.Errorf("device CN %q serial %x", d.Subject.CommonName, d.SerialNumber)
			} else if v := d.NotAfter.Sub(d.NotBefore); v < 364*24*time.Hour || v > 366*24*time.Hour {
				t.Errorf("device validity %v, want 365 days", v)
			}
			if root := mustCert(t, p(FileCA)); root.NotAfter.Sub(root.NotBefore) < 10*365*24*time.Hour {
				t.Errorf("root validity %v, want 10 years", root.NotAfter.Sub(root.NotBefore))
			}
		})
	}
}

// TestOpenSSLVerify checks the chains with another implementation, when openssl is installed.
func TestOpenSSLVerify(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not on PATH")
	}
	for _, alg := range []KeyAlg{P256, Ed25519} {
		dir := newPKI(t, InitOptions{Key: alg})
		if err := IssueDevice(dir, "d1", alg, 30); err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			name, cert, untrusted, purpose string
			wantErr                        bool
		}{
			{"device", "devices/d1.crt", FileDeviceCA, "sslclient", false},
			{"gateway client", FileGatewayClient, FileGatewayCA, "sslclient", false},
			{"gateway server", FileGateway, "", "sslserver", false},
			{"broker server", FileBroker, "", "sslserver", false},
			{"device via gateway CA", "devices/d1.crt", FileGatewayCA, "sslclient", true},
			{"gateway client via device CA", FileGatewayClient, FileDeviceCA, "sslclient", true},
			{"device as server", "devices/d1.crt", FileDeviceCA, "sslserver", true},
		}
		for _, tt := range tests {
			t.Run(string(alg)+"/"+tt.name, func(t *testing.T) {
				args := []string{"verify", "-purpose", tt.purpose, "-CAfile", FileCA}
				if tt.untrusted != "" {
					args = append(args, "-untrusted", tt.untrusted)
				}
				cmd := exec.Command("openssl", append(args, tt.cert)...)
				cmd.Dir = dir
				out, err := cmd.CombinedOutput()
				if (err != nil) != tt.wantErr {
					t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
				}
			})
		}
		t.Run(string(alg)+"/crl", func(t *testing.T) {
			if err := Revoke(dir, "d1"); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("openssl", "verify", "-crl_check", "-CRLfile", FileCRL, "-CAfile", FileCA,
				"-untrusted", FileDeviceCA, "devices/d1.crt")
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), "revoked") {
				t.Fatalf("openssl accepted a revoked device: %v\n%s", err, out)
			}
		})
	}
}

func TestKeyFileModes(t *testing.T) {
	old := setUmask(0) // a permissive umask must not widen key files
	defer setUmask(old)
	dir := newPKI(t, InitOptions{})
	if _, err := IssueDevices(dir, 3, "m", P256); err != nil {
		t.Fatal(err)
	}
	if err := IssueDevice(dir, "solo", Ed25519, 1); err != nil {
		t.Fatal(err)
	}
	n := 0
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if strings.HasSuffix(path, ".key") {
			n++
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: mode %v, want 0600", path, fi.Mode().Perm())
			}
		} else if strings.Contains(filepath.Base(path), ".tmp-") {
			t.Errorf("temporary file left behind: %s", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := 6 + 1 + 3 + 1; n != want { // CAs (with the issuing CA), servers, client; app token; 3+1 devices
		t.Errorf("%d key files, want %d", n, want)
	}
}

func TestInitForce(t *testing.T) {
	dir := newPKI(t, InitOptions{})
	if err := IssueDevice(dir, "old", P256, 0); err != nil {
		t.Fatal(err)
	}
	oldRoot := mustCert(t, filepath.Join(dir, FileCA))
	tests := []struct {
		name    string
		opts    InitOptions
		wantErr error
	}{
		{"refuses without force", InitOptions{}, ErrExists},
		{"bad site", InitOptions{Site: "a/b", Force: true}, nil},
		{"bad key", InitOptions{Key: "rsa", Force: true}, nil},
		{"bad host", InitOptions{Hosts: []string{"not a host"}, Force: true}, nil},
		{"replaces with force", InitOptions{Force: true, Site: "s2"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Init(dir, tt.opts)
			wantFail := tt.wantErr != nil || tt.name != "replaces with force"
			if (err != nil) != wantFail {
				t.Fatalf("Init error = %v", err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("Init error = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == ErrExists && err.Error() != filepath.Join(dir, FileCA)+" exists (use --force to replace the CA)" {
				t.Errorf("message %q", err)
			}
			if err != nil && !mustCert(t, filepath.Join(dir, FileCA)).Equal(oldRoot) {
				t.Fatal("a failed Init replaced ca.crt")
			}
		})
	}
	if mustCert(t, filepath.Join(dir, FileCA)).Equal(oldRoot) {
		t.Fatal("Init --force kept the old root")
	}
	if c, _ := DevicePaths(dir, "old"); exists(c) {
		t.Error("device of the replaced CA is still there")
	}
	if site, _ := ParseSiteAndID(mustCert(t, filepath.Join(dir, FileGatewayClient))); site != "s2" {
		t.Errorf("site %q", site)
	}
	if err := IssueDevice(dir, "new", P256, 0); err != nil {
		t.Fatal(err)
	}
	c, _ := DevicePaths(dir, "new")
	if _, err := mustCert(t, c).Verify(x509.VerifyOptions{Roots: mustPool(t, filepath.Join(dir, FileDeviceCA)),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
}

func TestIssueDevice(t *testing.T) {
	dir := newPKI(t, InitOptions{})
	tests := []struct {
		name    string
		id      string
		key     KeyAlg
		days    int
		wantErr bool
	}{
		{"p256 default", "dev.a_1-B", P256, 0, false},
		{"empty alg is p256", "dev-b", "", 10, false},
		{"ed25519", "dev-ed", Ed25519, 7, false},
		{"existing", "dev-b", P256, 0, true},
		{"slash", "a/b", P256, 0, true},
		{"empty id", "", P256, 0, true},
		{"too long", strings.Repeat("x", 65), P256, 0, true},
		{"max length", strings.Repeat("x", 64), P256, 0, false},
		{"negative days", "dev-n", P256, -1, true},
		{"unknown alg", "dev-r", "rsa", 0, true},
	}
	pool := mustPool(t, filepath.Join(dir, FileDeviceCA))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := IssueDevice(dir, tt.id, tt.key, tt.days)
			if (err != nil) != tt.wantErr {
				t.Fatalf("IssueDevice error = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			certFile, keyFile := DevicePaths(dir, tt.id)
			c := mustCert(t, certFile)
			if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Fatal(err)
			}
			k, err := LoadKey(keyFile)
			if err != nil {
				t.Fatal(err)
			}
			if !k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(c.PublicKey) {
				t.Fatal("key does not match certificate")
			}
			if want := map[KeyAlg]x509.PublicKeyAlgorithm{"": x509.ECDSA, P256: x509.ECDSA, Ed25519: x509.Ed25519}[tt.key]; c.PublicKeyAlgorithm != want {
				t.Errorf("key algorithm %v, want %v", c.PublicKeyAlgorithm, want)
			}
			days := tt.days
			if days == 0 {
				days = 365
			}
			if got := c.NotAfter.Sub(c.NotBefore) - backdate; got.Round(time.Hour) != time.Duration(days)*24*time.Hour {
				t.Errorf("validity %v, want %d days", got, days)
			}
		})
	}
}

func TestIssueDevices(t *testing.T) {
	dir := newPKI(t, InitOptions{})
	tests := []struct {
		name        string
		count       int
		prefix      string
		key         KeyAlg
		wantErr     bool
		wantIssued  int
		wantSkipped int
	}{
		{"200 p256", 200, "", P256, false, 200, 0},
		{"again skips", 200, "", P256, false, 0, 200},
		{"grow", 210, "", P256, false, 10, 200},
		{"ed25519 fleet", 20, "ed", Ed25519, false, 20, 0},
		{"zero", 0, "", P256, true, 0, 0},
		{"too many", MaxBulkDevices + 1, "", P256, true, 0, 0},
		{"bad prefix", 1, "a b", P256, true, 0, 0},
		{"prefix too long", 1, strings.Repeat("p", 60), P256, true, 0, 0},
	}
	pool := mustPool(t, filepath.Join(dir, FileDeviceCA))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := IssueBulk(dir, BulkOptions{Count: tt.count, Prefix: tt.prefix, Key: tt.key})
			if (err != nil) != tt.wantErr {
				t.Fatalf("IssueBulk error = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if res.Issued != tt.wantIssued || res.Skipped != tt.wantSkipped || len(res.IDs) != tt.count {
				t.Fatalf("issued %d skipped %d ids %d", res.Issued, res.Skipped, len(res.IDs))
			}
			prefix := tt.prefix
			if prefix == "" {
				prefix = DefaultDevicePrefix
			}
			if res.IDs[0] != prefix+"-00001" {
				t.Errorf("first ID %q", res.IDs[0])
			}
			seen := map[string]bool{}
			for _, id := range res.IDs {
				certFile, _ := DevicePaths(dir, id)
				c := mustCert(t, certFile)
				if c.Subject.CommonName != id {
					t.Fatalf("CN %q for %s", c.Subject.CommonName, id)
				}
				if seen[c.SerialNumber.String()] {
					t.Fatalf("duplicate serial %x", c.SerialNumber)
				}
				seen[c.SerialNumber.String()] = true
				if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
					t.Fatalf("%s: %v", id, err)
				}
			}
		})
	}
	// An interrupted run (a key without certificate, an empty certificate) is completed by the next one.
	c1, k1 := DevicePaths(dir, "dev-00001")
	c2, _ := DevicePaths(dir, "dev-00002")
	if err := os.Remove(c1); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c2, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	oldKey, _ := os.ReadFile(k1)
	res, err := IssueBulk(dir, BulkOptions{Count: 5})
	if err != nil || res.Issued != 2 || res.Skipped != 3 {
		t.Fatalf("repair run: %+v, %v", res, err)
	}
	if newKey, _ := os.ReadFile(k1); string(newKey) == string(oldKey) {
		t.Error("repair kept the key of the interrupted pair")
	}
	for _, id := range []string{"dev-00001", "dev-00002"} {
		certFile, keyFile := DevicePaths(dir, id)
		k, err := LoadKey(keyFile)
		if err != nil {
			t.Fatal(err)
		}
		if !k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(mustCert(t, certFile).PublicKey) {
			t.Fatalf("%s: key does not match certificate after repair", id)
		}
	}

	ids, err := IssueDevices(dir, 3, "", "")
	if err != nil || len(ids) != 3 || ids[2] != "dev-00003" {
		t.Fatalf("IssueDevices = %v, %v", ids, err)
	}
	if _, err := IssueDevices(t.TempDir(), 3, "", ""); err == nil {
		t.Fatal("IssueDevices without a device CA succeeded")
	}
}

// BenchmarkIssueDevices10k measures the bulk path at fleet size: `go test -run ^$ -bench IssueDevices10k`.
func BenchmarkIssueDevices10k(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		dir := newPKI(b, InitOptions{})
		b.StartTimer()
		if _, err := IssueDevices(dir, 10_000, "", P256); err != nil {
			b.Fatal(err)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	dir := newPKI(t, InitOptions{})
	p := func(n string) string { return filepath.Join(dir, n) }
	tests := []struct {
		name string
		load func() error
	}{
		{"cert missing", func() error { _, err := LoadCert(p("nope.crt")); return err }},
		{"cert from key file", func() error { _, err := LoadCert(p(FileGatewayKey)); return err }},
		{"key from cert file", func() error { _, err := LoadKey(p(FileGateway)); return err }},
		{"pool of nothing", func() error { _, err := LoadPool(); return err }},
		{"pool missing", func() error { _, err := LoadPool(p(FileCA), p("nope")); return err }},
		{"token key from cert", func() error { _, err := LoadTokenKey(p(FileCA)); return err }},
		{"client TLS half pair", func() error { _, err := ClientTLS(p(FileCA), p(FileGatewayClient), ""); return err }},
		{"server TLS mismatched pair", func() error { _, err := ServerTLS(p(FileGateway), p(FileBrokerKey), nil, nil); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.load(); err == nil {
				t.Fatal("no error")
			}
		})
	}
	if !ValidDeviceID("a.B_c-9") || ValidDeviceID("a+b") || ValidDeviceID("é") {
		t.Error("ValidDeviceID")
	}
}

// "." and ".." are made of the ID alphabet but name directories: as device
// IDs they put a device's files outside devices/ (DevicePaths(dir, "..") is
// the PKI directory's own name with .crt and .key beside it).
func TestDeviceIDNotDotOrDotDot(t *testing.T) {
	for _, id := range []string{".", ".."} {
		if ValidDeviceID(id) {
			t.Errorf("ValidDeviceID(%q) = true", id)
		}
	}
	for _, id := range []string{"...", ".a", "a..b", "a."} {
		if !ValidDeviceID(id) {
			t.Errorf("ValidDeviceID(%q) = false", id)
		}
	}
	parent := t.TempDir()
	dir := filepath.Join(parent, "pki")
	if err := Init(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{".", ".."} {
		if err := IssueDevice(dir, id, P256, 0); err == nil {
			t.Errorf("IssueDevice(%q) succeeded", id)
		}
		if err := Revoke(dir, id); err == nil {
			t.Errorf("Revoke(%q) succeeded", id)
		}
		if err := Init(t.TempDir(), InitOptions{Site: id}); err == nil {
			t.Errorf("Init with site %q succeeded", id)
		}
		if err := Init(t.TempDir(), InitOptions{GatewayID: id}); err == nil {
			t.Errorf("Init with gateway ID %q succeeded", id)
		}
	}
	for _, f := range []string{filepath.Join(parent, "pki.crt"), filepath.Join(parent, "pki.key"),
		filepath.Join(dir, "devices.crt"), filepath.Join(dir, "devices.key")} {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s written", f)
		}
	}
}

// TestIssuingCAChain checks the hierarchy Init writes for enrolment: the issuing CA chains to the root through the
// device CA, may sign end-entity certificates only (path length 0), and a certificate it signs verifies against
// the device CA alone (the gateway's client pool) and against the root.
func TestIssuingCAChain(t *testing.T) {
	dir := newPKI(t, InitOptions{})
	iss, err := loadIssuer(filepath.Join(dir, FileIssuingCA), filepath.Join(dir, FileIssuingCAKey))
	if err != nil {
		t.Fatal(err)
	}
	if !iss.cert.MaxPathLenZero || iss.cert.MaxPathLen != 0 {
		t.Errorf("issuing CA path length %d (zero %v), want 0", iss.cert.MaxPathLen, iss.cert.MaxPathLenZero)
	}
	if d := time.Until(iss.cert.NotAfter); d > IssuingCAValidity || d < IssuingCAValidity-time.Hour {
		t.Errorf("issuing CA valid for %v, want %v", d, IssuingCAValidity)
	}
	key, err := generateKey(P256)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _, err := iss.sign(Profiles.Device, Request{CommonName: "enrolled-1", Validity: OperationalValidity}, key.Public(), nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(iss.cert)
	devCA, err := LoadCert(filepath.Join(dir, FileDeviceCA))
	if err != nil {
		t.Fatal(err)
	}
	inter.AddCert(devCA)
	for _, root := range []string{FileDeviceCA, FileCA} {
		roots, err := LoadPool(filepath.Join(dir, root))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("operational certificate against %s: %v", root, err)
		}
	}
	// Path length 0: a CA signed by the issuing CA is refused.
	sub, _, err := iss.sign(Profiles.IssuingCA, Request{CommonName: "rogue"}, key.Public(), nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	inter.AddCert(sub)
	k2, _ := generateKey(P256)
	below, _, err := (&issuer{cert: sub, key: key}).sign(Profiles.Device, Request{CommonName: "x"}, k2.Public(), nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	roots, _ := LoadPool(filepath.Join(dir, FileDeviceCA))
	if _, err := below.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("a certificate under a CA below the issuing CA verified")
	}
	for _, f := range []string{FileIssuingCRL, FileGatewayCRL, FileRevokedTokens, FileEnroll, ManufacturersDir} {
		if !exists(filepath.Join(dir, f)) {
			t.Errorf("init wrote no %s", f)
		}
	}
}
