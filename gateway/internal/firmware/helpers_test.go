package firmware

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/update"
)

// repo is a TUF repository in a directory (metadata/, targets/), one key per top-level role, with a
// P-256 update-signing key, and a PKI whose tuf-root.json and update-signing.pub trust it.
type repo struct {
	t       testing.TB
	dir     string
	pki     string
	keys    map[string]ed25519.PrivateKey
	signing crypto.Signer
	root    *metadata.Metadata[metadata.RootType]
	targets *metadata.Metadata[metadata.TargetsType]
	snap    *metadata.Metadata[metadata.SnapshotType]
	ts      *metadata.Metadata[metadata.TimestampType]
}

func days(n int) time.Time { return time.Now().UTC().AddDate(0, 0, n).Truncate(time.Second) }

func newRepo(t testing.TB) *repo {
	t.Helper()
	r := &repo{t: t, dir: t.TempDir(), pki: t.TempDir(), keys: map[string]ed25519.PrivateKey{}}
	if err := pki.Init(r.pki, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	r.root = metadata.Root(days(365))
	r.root.Signed.ConsistentSnapshot = false
	r.targets, r.snap, r.ts = metadata.Targets(days(90)), metadata.Snapshot(days(7)), metadata.Timestamp(days(1))
	for _, role := range []string{"root", "targets", "snapshot", "timestamp"} {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		r.keys[role] = priv
		k, err := metadata.KeyFromPublicKey(priv.Public())
		check(t, err)
		check(t, r.root.Signed.AddKey(k, role))
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	r.signing = key
	der, _ := x509.MarshalPKIXPublicKey(key.Public())
	check(t, os.WriteFile(filepath.Join(r.pki, pki.FileUpdateSigningPub), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644))
	check(t, os.MkdirAll(filepath.Join(r.dir, "metadata"), 0o755))
	r.sign(r.root, "root")
	b, err := r.root.ToBytes(true)
	check(t, err)
	check(t, os.WriteFile(filepath.Join(r.pki, pki.FileTUFRoot), b, 0o644))
	r.write("1.root.json", r.root)
	r.write("root.json", r.root)
	r.publish()
	return r
}

func check(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type signable interface {
	Sign(signature.Signer) (*metadata.Signature, error)
	ClearSignatures()
	ToFile(string, bool) error
}

func (r *repo) sign(m signable, role string) {
	s, err := signature.LoadSigner(r.keys[role], crypto.Hash(0))
	check(r.t, err)
	m.ClearSignatures()
	_, err = m.Sign(s)
	check(r.t, err)
}

func (r *repo) write(name string, m signable) {
	check(r.t, m.ToFile(filepath.Join(r.dir, "metadata", name), false))
}

// publish bumps and signs targets, snapshot and timestamp, in that order, and writes them.
func (r *repo) publish() {
	r.targets.Signed.Version++
	r.sign(r.targets, "targets")
	r.write("targets.json", r.targets)
	r.snap.Signed.Meta["targets.json"] = metadata.MetaFile(r.targets.Signed.Version)
	r.snap.Signed.Version++
	r.sign(r.snap, "snapshot")
	r.write("snapshot.json", r.snap)
	r.ts.Signed.Meta["snapshot.json"] = metadata.MetaFile(r.snap.Signed.Version)
	r.ts.Signed.Version++
	r.sign(r.ts, "timestamp")
	r.write("timestamp.json", r.ts)
}

// addTarget writes data as the target name and lists it (not yet published).
func (r *repo) addTarget(name string, data []byte) {
	p := filepath.Join(r.dir, "targets", filepath.FromSlash(name))
	check(r.t, os.MkdirAll(filepath.Dir(p), 0o755))
	check(r.t, os.WriteFile(p, data, 0o644))
	tf, err := metadata.TargetFile().FromBytes(name, data, "sha256")
	check(r.t, err)
	r.targets.Signed.Targets[name] = tf
}

// release signs a manifest of image for model/version and publishes both as targets.
func (r *repo) release(model, version string, image []byte) *update.Manifest {
	d := sha256.Sum256(image)
	m := &update.Manifest{V: 1, Vendor: "VitalGate", Model: model, Version: version, Seq: 2, Digest: d[:],
		Size: uint64(len(image)), NotAfter: days(90).UnixMilli()}
	cose, err := update.Sign(r.signing, m)
	check(r.t, err)
	r.addTarget(model+"/"+version+"/image.bin", image)
	r.addTarget(model+"/"+version+"/manifest.cose", cose)
	r.publish()
	return m
}

// serve serves the repository directory as a static HTTPS host that requires a client certificate from the
// gateway CA (the broker's rule), on loopback; it returns the base URL.
func (r *repo) serve() string {
	r.t.Helper()
	pool, err := pki.LoadPool(filepath.Join(r.pki, pki.FileGatewayCA))
	check(r.t, err)
	tc, err := pki.ServerTLS(filepath.Join(r.pki, pki.FileBroker), filepath.Join(r.pki, pki.FileBrokerKey), pool, nil)
	check(r.t, err)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tc)
	check(r.t, err)
	hs := &http.Server{Handler: http.FileServer(http.Dir(r.dir)), ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(ln)
	r.t.Cleanup(func() { hs.Close() })
	return "https://" + ln.Addr().String()
}

// store opens a Store of the repository at url with its data in data.
func (r *repo) store(url, data string) *Store {
	r.t.Helper()
	s, err := New(Options{URL: url, PKI: r.pki, Data: data, CacheBytes: 64 << 20, Refresh: time.Minute,
		Log: slog.New(slog.DiscardHandler)})
	check(r.t, err)
	return s
}

// image is n bytes of a pattern that differs per seed.
func image(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

// freePort is a loopback port free at the time of the call.
func freePort(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }
