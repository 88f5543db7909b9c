package firmware

import (
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

func TestFetchVerifiesAndCachesOnce(t *testing.T) {
	r := newRepo(t)
	img := image(300<<10, 1)
	m := r.release("oxi-1", "1.2.0", img)
	url, data := r.serve(), t.TempDir()
	s := r.store(url, data)
	got, err := s.Fetch(context.Background(), "oxi-1", "1.2.0")
	check(t, err)
	if got.SHA256 != hex.EncodeToString(m.Digest) || got.Size != int64(len(img)) || got.Manifest.Seq != 2 {
		t.Fatalf("image %+v, want sha %x size %d", got, m.Digest, len(img))
	}
	fetched := testutil.ToFloat64(s.m.fetched)
	if _, err := s.Fetch(context.Background(), "oxi-1", "1.2.0"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(s.m.fetched); n != fetched {
		t.Fatalf("second fetch downloaded %v bytes: each image is fetched once", n-fetched)
	}
	// A restart finds the image in the cache: a store whose repository is gone serves it.
	s2, err := New(Options{URL: "https://127.0.0.1:1", PKI: r.pki, Data: data, CacheBytes: 64 << 20, Refresh: 60e9, Log: s.o.Log})
	check(t, err)
	f, _, err := s2.Open(got.SHA256)
	check(t, err)
	f.Close()
	if s2.cache.bytes() != int64(len(img)) {
		t.Fatalf("cache holds %d bytes after restart, want %d", s2.cache.bytes(), len(img))
	}
}

// TestFetchPublishedSinceRefresh: an image published after the store last
// refreshed its metadata (an operator publishes it, then starts the job)
// is found: a target the metadata does not list makes the store refresh
// once before it refuses.
func TestFetchPublishedSinceRefresh(t *testing.T) {
	defer func(d time.Duration) { minRefresh = d }(minRefresh)
	minRefresh = 0
	r := newRepo(t)
	r.release("oxi-1", "1.2.0", image(1000, 1))
	s := r.store(r.serve(), t.TempDir())
	_, err := s.Fetch(context.Background(), "oxi-1", "1.2.0")
	check(t, err)
	m := r.release("oxi-1", "1.3.0", image(1000, 2))
	got, err := s.Fetch(context.Background(), "oxi-1", "1.3.0")
	if err != nil || got.SHA256 != hex.EncodeToString(m.Digest) {
		t.Fatalf("image published since the refresh: %+v %v", got, err)
	}
	if _, err := s.Fetch(context.Background(), "oxi-1", "9.9.9"); err == nil || !strings.Contains(err.Error(), "target oxi-1/9.9.9/image.bin") {
		t.Fatalf("an image never published: %v", err)
	}
}

// refused fetches model 1.0.0 with a fresh store and returns the error, which must not be nil.
func refused(t *testing.T, r *repo, url string) error {
	t.Helper()
	_, err := r.store(url, t.TempDir()).Fetch(context.Background(), "m", "1.0.0")
	if err == nil {
		t.Fatal("fetch accepted")
	}
	return err
}

func TestTUFMetadataRefused(t *testing.T) {
	t.Run("expired timestamp", func(t *testing.T) {
		r := newRepo(t)
		r.release("m", "1.0.0", image(1000, 2))
		r.ts.Signed.Expires = days(-1)
		r.ts.Signed.Version++
		r.sign(r.ts, "timestamp")
		r.write("timestamp.json", r.ts)
		var e *metadata.ErrExpiredMetadata
		if err := refused(t, r, r.serve()); !errorsAs(err, &e) {
			t.Fatalf("error %v, want expired metadata", err)
		}
	})
	t.Run("timestamp signature missing", func(t *testing.T) {
		r := newRepo(t)
		r.release("m", "1.0.0", image(1000, 2))
		r.ts.ClearSignatures()
		r.write("timestamp.json", r.ts)
		var e *metadata.ErrUnsignedMetadata
		if err := refused(t, r, r.serve()); !errorsAs(err, &e) {
			t.Fatalf("error %v, want not enough signatures", err)
		}
	})
	t.Run("targets signed by the snapshot key", func(t *testing.T) {
		r := newRepo(t)
		r.release("m", "1.0.0", image(1000, 2))
		r.sign(r.targets, "snapshot")
		r.write("targets.json", r.targets)
		var e *metadata.ErrUnsignedMetadata
		if err := refused(t, r, r.serve()); !errorsAs(err, &e) {
			t.Fatalf("error %v, want not enough signatures", err)
		}
	})
	t.Run("rolled back", func(t *testing.T) {
		r := newRepo(t)
		r.release("m", "1.0.0", image(1000, 2))
		old, err := os.ReadFile(filepath.Join(r.dir, "metadata", "timestamp.json"))
		check(t, err)
		r.publish()
		url, data := r.serve(), t.TempDir()
		check(t, r.store(url, data).Refresh()) // the gateway has seen the newer timestamp
		check(t, os.WriteFile(filepath.Join(r.dir, "metadata", "timestamp.json"), old, 0o644))
		err = r.store(url, data).Refresh() // after a restart too
		var e *metadata.ErrBadVersionNumber
		if !errorsAs(err, &e) {
			t.Fatalf("rolled-back timestamp: error %v, want a bad version number", err)
		}
	})
}

func TestImageRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(r *repo, img []byte)
		want   string
	}{
		{"digest differs", func(r *repo, img []byte) {
			// The repository lists (and TUF-signs) another image than the manifest names.
			bad := append([]byte{}, img...)
			bad[10] ^= 1
			r.addTarget("m/1.0.0/image.bin", bad)
			r.publish()
		}, "digest"},
		{"size differs", func(r *repo, img []byte) {
			r.addTarget("m/1.0.0/image.bin", append(append([]byte{}, img...), 0))
			r.publish()
		}, "digest"},
		{"file on the host differs from the metadata", func(r *repo, img []byte) {
			bad := append([]byte{}, img...)
			bad[0] ^= 1
			check(t, os.WriteFile(filepath.Join(r.dir, "targets", "m", "1.0.0", "image.bin"), bad, 0o644))
		}, "hash verification failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRepo(t)
			img := image(5000, 3)
			r.release("m", "1.0.0", img)
			tc.change(r, img)
			reg := prometheus.NewRegistry()
			s, err := New(Options{URL: r.serve(), PKI: r.pki, Data: t.TempDir(), CacheBytes: 1 << 20, Refresh: 60e9,
				Log: r.store("https://x", t.TempDir()).o.Log, Metrics: reg})
			check(t, err)
			_, err = s.Fetch(context.Background(), "m", "1.0.0")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if s.cache.bytes() != 0 || testutil.ToFloat64(s.m.fetches.WithLabelValues("refused")) != 1 {
				t.Fatalf("refused image cached (%d bytes) or not counted", s.cache.bytes())
			}
		})
	}
}
