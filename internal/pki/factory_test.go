package pki

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestAllowListRoundTrip appends to the allow-list Init writes and reads it back: entries in order, the comment
// kept, exact duplicates skipped, conflicts refused without a change to the file.
func TestAllowListRoundTrip(t *testing.T) {
	dir := newPKI(t, InitOptions{})
	path := filepath.Join(dir, FileEnroll)
	if l, err := ReadAllowList(path); err != nil || len(l) != 0 {
		t.Fatalf("fresh allow-list = %v, %v", l, err)
	}
	first := []AllowEntry{{"ACME-00000001", "pump-1", ""}, {"0a1b2c", "pump-2", ""}, {"12345", "pump.3", ""}}
	if err := AppendAllowList(dir, first); err != nil {
		t.Fatal(err)
	}
	more := append(first[1:2:2], AllowEntry{"ACME-00000004", "pump-4", ""}) // one listed already, one new
	if err := AppendAllowList(dir, more); err != nil {
		t.Fatal(err)
	}
	want := append(first, AllowEntry{"ACME-00000004", "pump-4", ""})
	got, err := ReadAllowList(path)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("ReadAllowList = %v, %v; want %v", got, err, want)
	}
	data, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(data), allowListHeader) {
		t.Errorf("comment lost:\n%s", data)
	}
	if !strings.Contains(string(data), `- {serial: "12345", id: "pump.3"}`) {
		t.Errorf("entry not one a line, quoted:\n%s", data)
	}
	for name, bad := range map[string][]AllowEntry{
		"serial listed as another ID":   {{"ACME-00000001", "pump-9", ""}},
		"ID listed with another serial": {{"ACME-00000009", "pump-1", ""}},
		"conflict within the call":      {{"X1", "new-1", ""}, {"X1", "new-2", ""}},
		"invalid ID":                    {{"X2", "a/b", ""}},
		"empty serial":                  {{"", "new-3", ""}},
	} {
		if err := AppendAllowList(dir, bad); err == nil {
			t.Errorf("%s: appended", name)
		} else if !strings.Contains(err.Error(), path) {
			t.Errorf("%s: error %q does not name the file", name, err)
		}
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, data) {
		t.Errorf("a refused append changed the file:\n%s", after)
	}

	// A directory without the file: the list is empty, and an append creates it with the comment.
	bare := t.TempDir()
	if l, err := ReadAllowList(filepath.Join(bare, FileEnroll)); err != nil || l != nil {
		t.Fatalf("missing allow-list = %v, %v", l, err)
	}
	if err := AppendAllowList(bare, first[:1]); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadAllowList(filepath.Join(bare, FileEnroll)); err != nil || !reflect.DeepEqual(got, first[:1]) {
		t.Fatalf("created allow-list = %v, %v", got, err)
	}
}

// TestReadAllowListStrict feeds broken allow-lists to ReadAllowList: each is refused with an error naming the
// file and what is wrong.
func TestReadAllowListStrict(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"unknown key", "- {serial: a, id: d1, site: x}\n", `entry 1: unknown key "site"`},
		{"missing id", "- {serial: a}\n", `serial "a": missing id`},
		{"missing serial", "- {serial: a, id: d1}\n- {id: d2}\n", "entry 2: missing serial"},
		{"null serial", "- {serial: null, id: d1}\n", `key "serial": want a non-empty string`},
		{"empty id", "- {serial: a, id: \"\"}\n", `key "id": want a non-empty string`},
		{"invalid id", "- {serial: a, id: ../x}\n", `invalid device ID "../x"`},
		{"serial twice", "- {serial: a, id: d1}\n- {serial: a, id: d2}\n", `entry 2: serial "a" already listed by entry 1`},
		{"id twice", "- {serial: a, id: d1}\n- {serial: b, id: d1}\n", `entry 2: device ID "d1" already listed by entry 1`},
		{"key twice", "- {serial: a, serial: b, id: d1}\n", `key "serial" given twice`},
		{"list value", "- {serial: [a], id: d1}\n", `key "serial": want a non-empty string`},
		{"alias", "- {serial: &s a, id: d1}\n- {serial: *s, id: d2}\n", `entry 2: key "serial"`},
		{"not a list", "serial: a\nid: d1\n", "want a list"},
		{"entry not a map", "- a\n", "entry 1: not a map"},
		{"two documents", "[]\n---\n[]\n", "more than one YAML document"},
		{"syntax", "- {serial: a\n", "yaml:"},
	}
	dir := t.TempDir()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-")+".yaml")
			if err := os.WriteFile(path, []byte(tt.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			l, err := ReadAllowList(path)
			if err == nil {
				t.Fatalf("accepted: %v", l)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q, want the file and %q", err, tt.want)
			}
		})
	}
	for name, ok := range map[string]string{"empty": "", "comment only": "# nothing yet\n", "null": "~\n", "flow empty": "[]\n"} {
		path := filepath.Join(dir, "ok.yaml")
		if err := os.WriteFile(path, []byte(ok), 0o644); err != nil {
			t.Fatal(err)
		}
		if l, err := ReadAllowList(path); err != nil || len(l) != 0 {
			t.Errorf("%s: %v, %v", name, l, err)
		}
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(big, MaxAllowListSize+1); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadAllowList(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("oversized allow-list: %v", err)
	}
}

// TestIssueFactory issues factory identities and checks them: the profile of the contract, trusted through the
// manufacturer CA and never through the deployment's CAs, keys 0600, listed in the allow-list, serials never
// reused across runs, and a second run is a no-op.
func TestIssueFactory(t *testing.T) {
	defer setUmask(setUmask(0))
	dir := newPKI(t, InitOptions{})
	got, err := IssueFactory(dir, FactoryOptions{Count: 3})
	if err != nil {
		t.Fatal(err)
	}
	want := []AllowEntry{{"ACME-00000001", "dev-00001", "acme"}, {"ACME-00000002", "dev-00002", "acme"}, {"ACME-00000003", "dev-00003", "acme"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("entries %v, want %v", got, want)
	}
	mfr := mustCert(t, filepath.Join(dir, ManufacturersDir, "acme.crt"))
	if mfr.Subject.CommonName != "acme Manufacturer CA" || !reflect.DeepEqual(mfr.Subject.Organization, []string{"acme"}) ||
		!mfr.IsCA || !mfr.MaxPathLenZero || mfr.CheckSignatureFrom(mfr) != nil {
		t.Errorf("manufacturer CA %+v", mfr.Subject)
	}
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	for _, e := range want {
		certFile, keyFile := FactoryPaths(dir, e.ID)
		c := mustCert(t, certFile)
		if c.Subject.CommonName != e.Serial || c.Subject.SerialNumber != e.Serial || !reflect.DeepEqual(c.Subject.Organization, []string{"acme"}) {
			t.Errorf("%s: subject %+v", e.ID, c.Subject)
		}
		if years := c.NotAfter.Sub(c.NotBefore).Hours() / 24 / 365; years < 14.9 || years > 15.1 {
			t.Errorf("%s: valid %.1f years, want 15", e.ID, years)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: mustPool(t, filepath.Join(dir, ManufacturersDir, "acme.crt")), KeyUsages: client}); err != nil {
			t.Errorf("%s against its manufacturer: %v", e.ID, err)
		}
		for _, root := range []string{FileCA, FileDeviceCA, FileIssuingCA} {
			if _, err := c.Verify(x509.VerifyOptions{Roots: mustPool(t, filepath.Join(dir, root)), KeyUsages: client}); err == nil {
				t.Errorf("%s verified against %s", e.ID, root)
			}
		}
		k, err := LoadKey(keyFile)
		if err != nil || !k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(c.PublicKey) {
			t.Errorf("%s: key does not match (%v)", e.ID, err)
		}
		for f, mode := range map[string]os.FileMode{keyFile: 0o600, certFile: 0o644} {
			if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != mode {
				t.Errorf("%s: mode %v, want %v (%v)", f, fi.Mode().Perm(), mode, err)
			}
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, FactoryDir, "acme-ca.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("manufacturer key: %v, %v", fi, err)
	}
	if l, err := ReadAllowList(filepath.Join(dir, FileEnroll)); err != nil || !reflect.DeepEqual(l, want) {
		t.Fatalf("allow-list %v, %v", l, err)
	}

	// Again: nothing changes. Then more devices, and a fleet of another prefix: the serials go on.
	before, _ := os.ReadFile(filepath.Join(dir, FactoryDir, "dev-00002.crt"))
	mfrBefore, _ := os.ReadFile(filepath.Join(dir, ManufacturersDir, "acme.crt"))
	if again, err := IssueFactory(dir, FactoryOptions{Count: 3}); err != nil || !reflect.DeepEqual(again, want) {
		t.Fatalf("second run %v, %v", again, err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, FactoryDir, "dev-00002.crt"))
	mfrAfter, _ := os.ReadFile(filepath.Join(dir, ManufacturersDir, "acme.crt"))
	if !bytes.Equal(before, after) || !bytes.Equal(mfrBefore, mfrAfter) {
		t.Error("a second run replaced an identity or the manufacturer")
	}
	grown, err := IssueFactory(dir, FactoryOptions{Count: 4})
	if err != nil || grown[3] != (AllowEntry{"ACME-00000004", "dev-00004", "acme"}) {
		t.Fatalf("grown fleet %v, %v", grown, err)
	}
	// An identity whose allow-list entry was lost (an interrupted run) is listed again by the next run.
	if err := os.WriteFile(filepath.Join(dir, FileEnroll), []byte("[]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	other, err := IssueFactory(dir, FactoryOptions{Count: 2, Prefix: "pump", Start: 7, Key: Ed25519})
	if err != nil || !reflect.DeepEqual(other, []AllowEntry{{"ACME-00000005", "pump-00007", "acme"}, {"ACME-00000006", "pump-00008", "acme"}}) {
		t.Fatalf("second fleet %v, %v", other, err)
	}
	if c := mustCert(t, filepath.Join(dir, FactoryDir, "pump-00007.crt")); c.PublicKeyAlgorithm != x509.Ed25519 {
		t.Errorf("key %v, want Ed25519", c.PublicKeyAlgorithm)
	}
	if _, err := IssueFactory(dir, FactoryOptions{Count: 4}); err != nil {
		t.Fatal(err)
	}
	if l, _ := ReadAllowList(filepath.Join(dir, FileEnroll)); len(l) != 6 {
		t.Errorf("allow-list has %d entries after the repair, want 6: %v", len(l), l)
	}

	// A second manufacturer numbers its own serials.
	globex, err := IssueFactory(dir, FactoryOptions{Manufacturer: "globex", Count: 1, Prefix: "gx"})
	if err != nil || globex[0] != (AllowEntry{"GLOBEX-00000001", "gx-00001", "globex"}) {
		t.Fatalf("globex %v, %v", globex, err)
	}
	for name, o := range map[string]FactoryOptions{
		"zero count":        {},
		"bad manufacturer":  {Count: 1, Manufacturer: "a b"},
		"bad prefix":        {Count: 1, Prefix: "a/b"},
		"negative days":     {Count: 1, Days: -1},
		"unknown algorithm": {Count: 1, Key: "rsa"},
		"negative start":    {Count: 1, Start: -2},
	} {
		if _, err := IssueFactory(dir, o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestIssueFactoryConcurrent runs two factory runs at once on one directory: the writer lock keeps their serials
// apart, and both fleets end up in the allow-list.
func TestIssueFactoryConcurrent(t *testing.T) {
	dir := newPKI(t, InitOptions{})
	errs := make(chan error, 2)
	for _, prefix := range []string{"a", "b"} {
		go func() {
			_, err := IssueFactory(dir, FactoryOptions{Count: 20, Prefix: prefix})
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	l, err := ReadAllowList(filepath.Join(dir, FileEnroll)) // refuses a serial listed twice
	if err != nil || len(l) != 40 {
		t.Fatalf("allow-list of %d entries, %v", len(l), err)
	}
	seen := map[string]bool{}
	for _, e := range l {
		certFile, _ := FactoryPaths(dir, e.ID)
		if sn := mustCert(t, certFile).Subject.SerialNumber; sn != e.Serial || seen[sn] {
			t.Fatalf("%s: identity serial %q, listed %q (seen %v)", e.ID, sn, e.Serial, seen[sn])
		}
		seen[e.Serial] = true
	}
}

// BenchmarkIssueFactory1k measures a factory run at a simulated fleet's size:
// `go test -run ^$ -bench IssueFactory1k ./internal/pki/`.
func BenchmarkIssueFactory1k(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		dir := newPKI(b, InitOptions{})
		b.StartTimer()
		if _, err := IssueFactory(dir, FactoryOptions{Count: 1000}); err != nil {
			b.Fatal(err)
		}
	}
}
