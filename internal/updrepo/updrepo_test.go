package updrepo

import (
	"bytes"
	"crypto"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/update"
)

// fixture is a PKI directory with update keys and an initialised repository.
type fixture struct {
	pkiDir, repo string
	keys         *Keys
	signer       crypto.Signer
	pub          crypto.PublicKey
	root         []byte
}

func newFixture(t *testing.T, alg pki.KeyAlg, now time.Time) *fixture {
	t.Helper()
	f := &fixture{pkiDir: t.TempDir(), repo: filepath.Join(t.TempDir(), "repo")}
	if err := pki.UpdateKeys(f.pkiDir, alg); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.keys, err = LoadKeys(f.pkiDir); err != nil {
		t.Fatal(err)
	}
	if f.signer, err = pki.LoadKey(filepath.Join(f.pkiDir, pki.FileUpdateSigningKey)); err != nil {
		t.Fatal(err)
	}
	if f.pub, err = update.LoadPublicKey(filepath.Join(f.pkiDir, pki.FileUpdateSigningPub)); err != nil {
		t.Fatal(err)
	}
	if f.root, err = Init(f.repo, f.keys, now); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) publish(t *testing.T, model, version string, seq uint64, image []byte, now time.Time) []byte {
	t.Helper()
	m := &update.Manifest{Vendor: "VitalGate", Model: model, Version: version, Seq: seq,
		NotAfter: now.Add(90 * 24 * time.Hour).UnixMilli()}
	cose, err := Firmware(f.repo, f.keys, f.signer, m, image, now)
	if err != nil {
		t.Fatal(err)
	}
	return cose
}

// serve serves the repository directory as a static HTTPS host (net/http's file server, real TLS on loopback).
func serve(t *testing.T, dir string) *httptest.Server {
	t.Helper()
	srv := httptest.NewTLSServer(http.FileServer(http.Dir(dir)))
	t.Cleanup(srv.Close)
	return srv
}

// client is go-tuf's own updater, trusting root, with its local metadata in local.
func client(t *testing.T, srv *httptest.Server, root []byte, local string) *updater.Updater {
	t.Helper()
	cfg, err := config.New(srv.URL+"/metadata", root)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RemoteTargetsURL = srv.URL + "/targets"
	cfg.LocalMetadataDir = local
	cfg.LocalTargetsDir = t.TempDir()
	if err := cfg.SetDefaultFetcherHTTPClient(srv.Client()); err != nil {
		t.Fatal(err)
	}
	if err := cfg.SetDefaultFetcherRetry(time.Millisecond, 1); err != nil {
		t.Fatal(err)
	}
	u, err := updater.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// download fetches and verifies one target through u.
func download(t *testing.T, u *updater.Updater, path string) ([]byte, *metadata.TargetFiles) {
	t.Helper()
	ti, err := u.GetTargetInfo(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	_, data, err := u.DownloadTarget(ti, "", "")
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return data, ti
}

// TestPublishAndFetch publishes two images and reads the newest through go-tuf's updater from a static HTTPS
// host: the image and manifest verify (TUF, then the manifest's signature, then its digest), the custom field
// names model, version and seq, and versions and expiries are as documented.
func TestPublishAndFetch(t *testing.T) {
	for _, alg := range []pki.KeyAlg{pki.P256, pki.Ed25519} {
		t.Run(string(alg), func(t *testing.T) {
			now := time.Now()
			f := newFixture(t, alg, now)
			f.publish(t, "oxi-1", "1.0.0", 1, []byte("firmware one"), now)
			image := bytes.Repeat([]byte("firmware two "), 1000)
			f.publish(t, "oxi-1", "1.1.0", 2, image, now)
			root, err := os.ReadFile(filepath.Join(f.repo, MetadataDir, "1.root.json"))
			if err != nil || !bytes.Equal(root, f.root) {
				t.Fatalf("1.root.json differs from what Init returned: %v", err)
			}

			u := client(t, serve(t, f.repo), f.root, t.TempDir())
			if err := u.Refresh(); err != nil {
				t.Fatal(err)
			}
			got, ti := download(t, u, ImagePath("oxi-1", "1.1.0"))
			if !bytes.Equal(got, image) {
				t.Fatal("image differs")
			}
			var c Custom
			if ti.Custom == nil || json.Unmarshal(*ti.Custom, &c) != nil || c != (Custom{"oxi-1", "1.1.0", 2}) {
				t.Fatalf("custom %v", ti.Custom)
			}
			cose, _ := download(t, u, ManifestPath("oxi-1", "1.1.0"))
			m, err := update.Parse(cose, f.pub)
			if err != nil {
				t.Fatal(err)
			}
			if err := update.CheckImage(m, got); err != nil {
				t.Fatal(err)
			}
			if m.Seq != 2 || m.Version != "1.1.0" || m.Vendor != "VitalGate" {
				t.Fatalf("manifest %+v", m)
			}

			tm := u.GetTrustedMetadataSet()
			for role, v := range map[string][2]any{
				"root":      {tm.Root.Signed.Version, tm.Root.Signed.Expires},
				"targets":   {tm.Targets["targets"].Signed.Version, tm.Targets["targets"].Signed.Expires},
				"snapshot":  {tm.Snapshot.Signed.Version, tm.Snapshot.Signed.Expires},
				"timestamp": {tm.Timestamp.Signed.Version, tm.Timestamp.Signed.Expires},
			} {
				want := map[string]int64{"root": 1, "targets": 3, "snapshot": 3, "timestamp": 3}[role]
				life := map[string]time.Duration{"root": RootExpiry, "targets": TargetsExpiry,
					"snapshot": SnapshotExpiry, "timestamp": TimestampExpiry}[role]
				if v[0].(int64) != want {
					t.Errorf("%s version %d, want %d", role, v[0], want)
				}
				if d := v[1].(time.Time).Sub(now); d < life-2*time.Second || d > life {
					t.Errorf("%s expires in %s, want %s", role, d, life)
				}
			}
			if tm.Root.Signed.ConsistentSnapshot {
				t.Error("consistent_snapshot is true")
			}
		})
	}
}

// TestClientRefuses: what go-tuf's updater must refuse in a repository this package wrote: an expired timestamp
// (until Refresh re-signs it), a rolled-back repository, a tampered image, metadata signed by keys the root does
// not trust.
func TestClientRefuses(t *testing.T) {
	now := time.Now()
	f := newFixture(t, pki.Ed25519, now.Add(-48*time.Hour))
	f.publish(t, "oxi-1", "1.0.0", 1, []byte("firmware one"), now.Add(-48*time.Hour))
	srv := serve(t, f.repo)

	err := client(t, srv, f.root, t.TempDir()).Refresh()
	if err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired timestamp: %v", err)
	}
	if err := Refresh(f.repo, f.keys, now); err != nil {
		t.Fatal(err)
	}
	local := t.TempDir()
	if err := client(t, srv, f.root, local).Refresh(); err != nil {
		t.Fatalf("after Refresh: %v", err)
	}

	// Roll the repository back to an older copy: a client that saw the newer one refuses it.
	old := filepath.Join(t.TempDir(), "old")
	copyDir(t, filepath.Join(f.repo, MetadataDir), old)
	f.publish(t, "oxi-1", "1.1.0", 2, []byte("firmware two"), now)
	if err := client(t, srv, f.root, local).Refresh(); err != nil {
		t.Fatal(err)
	}
	current := filepath.Join(t.TempDir(), "current")
	copyDir(t, filepath.Join(f.repo, MetadataDir), current)
	copyDir(t, old, filepath.Join(f.repo, MetadataDir))
	if err := client(t, srv, f.root, local).Refresh(); err == nil || !strings.Contains(err.Error(), "version") {
		t.Fatalf("rolled-back repository: %v", err)
	}
	copyDir(t, current, filepath.Join(f.repo, MetadataDir))
	f.publish(t, "oxi-1", "1.2.0", 3, []byte("firmware three"), now)

	// A tampered image fails TUF's length and hash check.
	u := client(t, srv, f.root, local)
	if err := u.Refresh(); err != nil {
		t.Fatal(err)
	}
	imgFile := filepath.Join(f.repo, TargetsDir, "oxi-1", "1.2.0", "image.bin")
	if err := os.WriteFile(imgFile, []byte("firmware thref"), 0o644); err != nil {
		t.Fatal(err)
	}
	ti, err := u.GetTargetInfo(ImagePath("oxi-1", "1.2.0"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := u.DownloadTarget(ti, "", ""); err == nil {
		t.Fatal("tampered image downloaded")
	}

	// Keys from another PKI directory: the writer refuses them before a client has to.
	other := newFixture(t, pki.Ed25519, now)
	m := &update.Manifest{Vendor: "V", Model: "oxi-1", Version: "2.0.0", Seq: 9, NotAfter: now.Add(time.Hour).UnixMilli()}
	if _, err := Firmware(f.repo, other.keys, f.signer, m, []byte("x"), now); err == nil || !strings.Contains(err.Error(), "not the one its root metadata trusts") {
		t.Fatalf("foreign keys: %v", err)
	}
}

// TestFirmwareRefuses: a version published twice, a seq not above the published ones, a repeated Init.
func TestFirmwareRefuses(t *testing.T) {
	now := time.Now()
	f := newFixture(t, pki.P256, now)
	f.publish(t, "oxi-1", "1.0.0", 5, []byte("a"), now)
	f.publish(t, "cuff-2", "1.0.0", 1, []byte("b"), now) // seq is per model
	for _, tc := range []struct {
		version string
		seq     uint64
		want    string
	}{
		{"1.0.0", 6, "already published"},
		{"1.1.0", 5, "not above seq 5"},
		{"1.1.0", 4, "not above seq 5"},
		{"latest", 6, "semantic version"},
	} {
		m := &update.Manifest{Vendor: "V", Model: "oxi-1", Version: tc.version, Seq: tc.seq, NotAfter: now.Add(time.Hour).UnixMilli()}
		if _, err := Firmware(f.repo, f.keys, f.signer, m, []byte("c"), now); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s seq %d: %v, want %q", tc.version, tc.seq, err, tc.want)
		}
	}
	if _, err := Init(f.repo, f.keys, now); err == nil {
		t.Error("Init replaced a repository")
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRefresh: a repository published 60 days ago (snapshot and timestamp expired, targets past half their life)
// is refused until Refresh re-signs it, and then serves the same image; a fresh repository's targets are kept.
func TestRefresh(t *testing.T) {
	now := time.Now()
	then := now.Add(-60 * 24 * time.Hour)
	f := newFixture(t, pki.P256, then)
	f.publish(t, "oxi-1", "1.0.0", 1, []byte("firmware one"), then)
	srv := serve(t, f.repo)
	if err := client(t, srv, f.root, t.TempDir()).Refresh(); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("60 days old: %v", err)
	}
	if err := Refresh(f.repo, f.keys, now); err != nil {
		t.Fatal(err)
	}
	u := client(t, srv, f.root, t.TempDir())
	if err := u.Refresh(); err != nil {
		t.Fatal(err)
	}
	if got, _ := download(t, u, ImagePath("oxi-1", "1.0.0")); string(got) != "firmware one" {
		t.Fatalf("image %q", got)
	}
	if v := u.GetTrustedMetadataSet().Targets["targets"].Signed.Version; v != 3 {
		t.Errorf("targets version %d, want 3 (renewed)", v)
	}
	before, _ := os.ReadFile(filepath.Join(f.repo, MetadataDir, "targets.json"))
	if err := Refresh(f.repo, f.keys, now); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(filepath.Join(f.repo, MetadataDir, "targets.json"))
	if !bytes.Equal(before, after) {
		t.Error("Refresh re-signed targets that had 90 days left")
	}
}
