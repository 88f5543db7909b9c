// Package firmware is the gateway's side of firmware updates: a TUF client of the update repository and an
// edge cache of its images.
//
// [Store.Fetch] maps a model and version to the repository's targets MODEL/VERSION/manifest.cose and
// MODEL/VERSION/image.bin (go-tuf's updater: root, timestamp, snapshot and targets metadata checked for
// signatures, thresholds, versions and expiry, starting from tuf-root.json of the PKI directory; the trusted
// metadata is kept in DATA/firmware/tuf, so a rollback is caught across restarts too), checks the manifest's
// signature with update-signing.pub and the image against the manifest (size, then digest), and caches the
// image in DATA/firmware/images, each image fetched once. [Route] serves the cached images to devices.
package firmware

import (
	"context"
	"crypto"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/update"
)

// Options configures a [Store].
type Options struct {
	URL        string        // the repository: metadata under URL/metadata/, targets under URL/targets/
	PKI        string        // tuf-root.json, update-signing.pub; ca.crt and gateway-client.crt/.key when Client is nil
	Data       string        // the gateway's data directory: the store keeps DATA/firmware
	CacheBytes int64         // images cached at most
	Refresh    time.Duration // the metadata is refreshed when older than this
	Client     *http.Client  // nil: one that trusts ca.crt and presents gateway-client.crt
	Log        *slog.Logger
	Metrics    prometheus.Registerer // nil: not registered
}

// Image is a verified image in the cache.
type Image struct {
	Manifest     *update.Manifest
	ManifestCOSE []byte
	SHA256       string // hex: the image's path /firmware/SHA256
	Size         int64
}

// Store is the TUF client and the image cache. Its methods are safe for concurrent use.
type Store struct {
	o     Options
	root  []byte // tuf-root.json
	pub   crypto.PublicKey
	fetch *fetcher
	cache *cache
	m     *metrics

	mu        sync.Mutex // one TUF operation at a time (go-tuf's updater is not safe for concurrent use)
	up        *updater.Updater
	refreshed time.Time
}

// New loads the trust anchors and the cache; nothing is fetched until [Store.Fetch] or [Store.Run].
func New(o Options) (*Store, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if u, err := url.Parse(o.URL); err != nil || u.Scheme == "" || u.Host == "" {
		return nil, fmt.Errorf("firmware: repository URL %q is not absolute", o.URL)
	}
	root, err := os.ReadFile(filepath.Join(o.PKI, pki.FileTUFRoot))
	if err != nil {
		return nil, fmt.Errorf("firmware: trusted root metadata: %w (create it with certs update-init)", err)
	}
	if _, err := (&metadata.Metadata[metadata.RootType]{}).FromBytes(root); err != nil {
		return nil, fmt.Errorf("firmware: %s: %w", pki.FileTUFRoot, err)
	}
	pub, err := update.LoadPublicKey(filepath.Join(o.PKI, pki.FileUpdateSigningPub))
	if err != nil {
		return nil, fmt.Errorf("firmware: update-signing key: %w", err)
	}
	if o.Client == nil {
		tc, err := pki.ClientTLS(filepath.Join(o.PKI, pki.FileCA), filepath.Join(o.PKI, pki.FileGatewayClient),
			filepath.Join(o.PKI, pki.FileGatewayClientKey))
		if err != nil {
			return nil, fmt.Errorf("firmware: client TLS: %w", err)
		}
		o.Client = &http.Client{Transport: &http.Transport{TLSClientConfig: tc, ResponseHeaderTimeout: 30 * time.Second}}
	}
	dir := filepath.Join(o.Data, "firmware")
	c, err := openCache(filepath.Join(dir, "images"), o.CacheBytes, o.Log)
	if err != nil {
		return nil, err
	}
	s := &Store{o: o, root: root, pub: pub, cache: c}
	s.m = newMetrics(o.Metrics, c)
	s.fetch = &fetcher{client: o.Client, timeout: 10 * time.Minute, bytes: s.m.fetched}
	return s, nil
}

// minRefresh bounds the refreshes a fetch of an image the metadata does not
// list asks for: at most one a second (a variable for the tests).
var minRefresh = time.Second

// updater returns an updater whose metadata was refreshed within Options.Refresh (mu held).
func (s *Store) updater() (*updater.Updater, error) {
	if s.up != nil && time.Since(s.refreshed) < s.o.Refresh {
		return s.up, nil
	}
	s.up = nil
	dir := filepath.Join(s.o.Data, "firmware", "tuf")
	// The newest root trusted so far (persisted by the updater), else the PKI's: a rotated root stays rotated.
	root := s.root
	if b, err := os.ReadFile(filepath.Join(dir, "root.json")); err == nil {
		root = b
	}
	cfg, err := config.New(s.o.URL+"/metadata/", root)
	if err != nil {
		return nil, err
	}
	cfg.RemoteTargetsURL = s.o.URL + "/targets/"
	cfg.LocalMetadataDir = dir
	cfg.LocalTargetsDir = filepath.Join(s.o.Data, "firmware", "tmp")
	cfg.Fetcher = s.fetch
	up, err := updater.New(cfg)
	if err == nil {
		err = up.Refresh()
	}
	if err != nil {
		s.m.refreshes.WithLabelValues("failed").Inc()
		return nil, fmt.Errorf("update repository metadata: %w", err)
	}
	s.m.refreshes.WithLabelValues("ok").Inc()
	s.up, s.refreshed = up, time.Now()
	return up, nil
}

// Refresh fetches and verifies the repository's metadata now.
func (s *Store) Refresh() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refreshed = time.Time{}
	_, err := s.updater()
	return err
}

// Run refreshes the metadata every Options.Refresh until ctx is done; failures are logged.
func (s *Store) Run(ctx context.Context) {
	t := time.NewTicker(s.o.Refresh)
	defer t.Stop()
	for {
		if err := s.Refresh(); err != nil {
			s.o.Log.Warn("firmware: refresh of the update repository failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Fetch returns the verified image of model and version, from the cache or fetched from the repository.
func (s *Store) Fetch(ctx context.Context, model, version string) (*Image, error) {
	img, err := s.fetchImage(ctx, model, version)
	switch {
	case err == nil:
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		s.m.fetches.WithLabelValues("error").Inc()
	default:
		s.m.fetches.WithLabelValues("refused").Inc()
		s.o.Log.Warn("firmware: image refused", "model", model, "version", version, "error", err)
	}
	return img, err
}

func (s *Store) fetchImage(ctx context.Context, model, version string) (*Image, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	up, err := s.updater()
	if err != nil {
		return nil, err
	}
	base := model + "/" + version + "/"
	imgT, err := up.GetTargetInfo(base + "image.bin")
	if err != nil && time.Since(s.refreshed) >= minRefresh {
		// Not in the metadata trusted so far: an image published since the
		// last refresh (an operator publishes, then starts the job) is
		// looked for in fresh metadata once.
		s.refreshed = time.Time{}
		if up, err = s.updater(); err != nil {
			return nil, err
		}
		imgT, err = up.GetTargetInfo(base + "image.bin")
	}
	if err != nil {
		return nil, fmt.Errorf("target %simage.bin: %w", base, err)
	}
	manT, err := up.GetTargetInfo(base + "manifest.cose")
	if err != nil {
		return nil, fmt.Errorf("target %smanifest.cose: %w", base, err)
	}
	sum := imgT.Hashes["sha256"]
	if len(sum) != 32 {
		return nil, fmt.Errorf("target %simage.bin: no sha256 hash in the targets metadata", base)
	}
	sha := hex.EncodeToString(sum)
	if cose := s.cache.manifest(sha); cose != nil {
		if img, err := s.image(cose, sha, model, version); err == nil && manT.VerifyLengthHashes(cose) == nil {
			s.m.fetches.WithLabelValues("cached").Inc()
			return img, nil
		}
	}
	cose, err := s.download(up, manT)
	if err != nil {
		return nil, err
	}
	img, err := s.image(cose, sha, model, version)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	data, err := s.download(up, imgT)
	if err != nil {
		return nil, err
	}
	if err := update.CheckImage(img.Manifest, data); err != nil {
		return nil, fmt.Errorf("image %s: %w", imgT.Path, err)
	}
	if err := s.cache.put(sha, data, cose); err != nil {
		return nil, err
	}
	s.m.fetches.WithLabelValues("fetched").Inc()
	s.o.Log.Info("firmware: image cached", "model", model, "version", version, "sha256", sha, "size", len(data))
	return img, nil
}

// download fetches a target, checked against its length and hashes in the targets metadata.
func (s *Store) download(up *updater.Updater, t *metadata.TargetFiles) ([]byte, error) {
	_, data, err := up.DownloadTarget(t, filepath.Join(s.o.Data, "firmware", "tmp", "download"), "")
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", t.Path, err)
	}
	_ = os.Remove(filepath.Join(s.o.Data, "firmware", "tmp", "download"))
	return data, nil
}

// image checks the manifest's signature and that it is the one of model and version and of image sha.
func (s *Store) image(cose []byte, sha, model, version string) (*Image, error) {
	m, err := update.Parse(cose, s.pub)
	if err != nil {
		return nil, fmt.Errorf("manifest of %s %s: %w", model, version, err)
	}
	switch {
	case m.Model != model || m.Version != version:
		return nil, fmt.Errorf("manifest of %s %s names %s %s", model, version, m.Model, m.Version)
	case hex.EncodeToString(m.Digest) != sha:
		return nil, fmt.Errorf("manifest of %s %s: digest %x, the repository's image is %s", model, version, m.Digest, sha)
	}
	return &Image{Manifest: m, ManifestCOSE: cose, SHA256: sha, Size: int64(m.Size)}, nil
}

// Open opens the cached image sha256hex for reading, with its modification time; an error wrapping
// os.ErrNotExist when it is not cached.
func (s *Store) Open(sha256hex string) (*os.File, time.Time, error) {
	if !validSHA(sha256hex) {
		return nil, time.Time{}, fmt.Errorf("%q is not a SHA-256 in lowercase hex: %w", sha256hex, os.ErrNotExist)
	}
	return s.cache.open(sha256hex)
}
