// Package updrepo writes the update repository of docs/updates.md#for-operators-publishing-an-image: a static TUF
// repository (github.com/theupdateframework/go-tuf/v2 metadata) that any HTTPS host can serve.
//
// # Layout
//
//	REPO/metadata/1.root.json, root.json   the root of trust (version 1; no rotation yet)
//	REPO/metadata/targets.json             the published files, with their length and SHA-256
//	REPO/metadata/snapshot.json            the version of targets.json
//	REPO/metadata/timestamp.json           the version, length and SHA-256 of snapshot.json
//	REPO/targets/PATH                      the files (consistent_snapshot false: no hash prefix)
//
// Each role has one key (threshold 1) under pki.TUFKeysDir. [Init] writes version 1 of everything; [Add] adds
// targets and re-signs targets, snapshot and timestamp with the next version and fresh expiries; [Refresh]
// re-signs snapshot and timestamp (and targets past half their lifetime). Files are written to a temporary name and renamed, files before the metadata
// that names them and the timestamp last, so a client reading during a publication sees the old or the new
// repository.
package updrepo

import (
	"crypto"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/vitalgate/vitalgate/internal/atomicfile"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// Directories of a repository and the lifetimes of its metadata.
const (
	MetadataDir = "metadata"
	TargetsDir  = "targets"

	RootExpiry      = 365 * 24 * time.Hour
	TargetsExpiry   = 90 * 24 * time.Hour
	SnapshotExpiry  = 7 * 24 * time.Hour
	TimestampExpiry = 24 * time.Hour
)

// Keys are the signing keys of the four roles.
type Keys struct {
	Root, Targets, Snapshot, Timestamp crypto.Signer
}

// LoadKeys reads TUFKeysDir/ROLE.key of a PKI directory.
func LoadKeys(pkiDir string) (*Keys, error) {
	var ks [4]crypto.Signer
	for i, role := range pki.TUFRoles {
		k, err := pki.LoadKey(filepath.Join(pkiDir, pki.TUFKeysDir, role+".key"))
		if err != nil {
			return nil, fmt.Errorf("update repository keys: %w", err)
		}
		ks[i] = k
	}
	return &Keys{Root: ks[0], Targets: ks[1], Snapshot: ks[2], Timestamp: ks[3]}, nil
}

func (k *Keys) byRole() map[string]crypto.Signer {
	return map[string]crypto.Signer{metadata.ROOT: k.Root, metadata.TARGETS: k.Targets,
		metadata.SNAPSHOT: k.Snapshot, metadata.TIMESTAMP: k.Timestamp}
}

// expiry is now+d in whole seconds, UTC: the form TUF clients compare.
func expiry(now time.Time, d time.Duration) time.Time { return now.UTC().Add(d).Truncate(time.Second) }

// Init writes a new repository into repo (created if missing) and returns its root metadata, the bytes of
// 1.root.json that clients trust. It refuses a directory that already holds root metadata.
func Init(repo string, keys *Keys, now time.Time) ([]byte, error) {
	meta := filepath.Join(repo, MetadataDir)
	if _, err := os.Stat(filepath.Join(meta, "root.json")); !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("update repository %s: root metadata exists (a repository is initialised once)", repo)
	}
	for _, d := range []string{meta, filepath.Join(repo, TargetsDir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("update repository: %w", err)
		}
	}
	root := metadata.Root(expiry(now, RootExpiry))
	root.Signed.ConsistentSnapshot = false
	for role, k := range keys.byRole() {
		key, err := metadata.KeyFromPublicKey(k.Public())
		if err != nil {
			return nil, fmt.Errorf("update repository: %s key: %w", role, err)
		}
		if err := root.Signed.AddKey(key, role); err != nil {
			return nil, fmt.Errorf("update repository: %s key: %w", role, err)
		}
	}
	rootJSON, err := signed(root, keys.Root)
	if err != nil {
		return nil, err
	}
	targets := metadata.Targets(expiry(now, TargetsExpiry))
	if err := writeMeta(repo, "1.root.json", rootJSON); err != nil {
		return nil, err
	}
	if err := writeMeta(repo, "root.json", rootJSON); err != nil {
		return nil, err
	}
	if err := publish(repo, keys, targets, nil, now); err != nil {
		return nil, err
	}
	return rootJSON, nil
}

// signed signs md with key (replacing any signature) and returns its JSON.
func signed[T metadata.Roles](md *metadata.Metadata[T], key crypto.Signer) ([]byte, error) {
	s, err := signature.LoadSigner(key, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("update repository: load signer: %w", err)
	}
	md.ClearSignatures()
	if _, err := md.Sign(s); err != nil {
		return nil, fmt.Errorf("update repository: sign: %w", err)
	}
	b, err := md.ToBytes(true)
	if err != nil {
		return nil, fmt.Errorf("update repository: encode: %w", err)
	}
	return b, nil
}

// publish writes files (target path → bytes), then targets.json as given (nil: kept as it is), then a snapshot
// and a timestamp that name it, each one version above the repository's current one (1 for a new repository).
func publish(repo string, keys *Keys, targets *metadata.Metadata[metadata.TargetsType], files map[string][]byte, now time.Time) error {
	for p, data := range files {
		full := filepath.Join(repo, TargetsDir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return fmt.Errorf("update repository: %w", err)
		}
		if err := writeFile(full, data); err != nil {
			return err
		}
	}
	snapshot := metadata.Snapshot(expiry(now, SnapshotExpiry))
	old, err := readSnapshot(repo)
	if err == nil {
		snapshot.Signed.Version = old.Signed.Version + 1
	}
	if targets == nil {
		if err != nil {
			return err
		}
		snapshot.Signed.Meta["targets.json"] = old.Signed.Meta["targets.json"]
	} else {
		targetsJSON, err := signed(targets, keys.Targets)
		if err != nil {
			return err
		}
		if err := writeMeta(repo, "targets.json", targetsJSON); err != nil {
			return err
		}
		snapshot.Signed.Meta["targets.json"] = metadata.MetaFile(targets.Signed.Version)
	}
	snapshotJSON, err := signed(snapshot, keys.Snapshot)
	if err != nil {
		return err
	}
	if err := writeMeta(repo, "snapshot.json", snapshotJSON); err != nil {
		return err
	}
	return stamp(repo, keys, snapshot.Signed.Version, snapshotJSON, now)
}

// stamp writes a timestamp one version above the current one naming snapshot.json (its version, length and
// SHA-256).
func stamp(repo string, keys *Keys, snapshotVersion int64, snapshotJSON []byte, now time.Time) error {
	ts := metadata.Timestamp(expiry(now, TimestampExpiry))
	if old, err := new(metadata.Metadata[metadata.TimestampType]).FromFile(metaPath(repo, "timestamp.json")); err == nil {
		ts.Signed.Version = old.Signed.Version + 1
	}
	mf := metadata.MetaFile(snapshotVersion)
	tf, err := metadata.TargetFile().FromBytes("snapshot.json", snapshotJSON, "sha256")
	if err != nil {
		return fmt.Errorf("update repository: hash snapshot: %w", err)
	}
	mf.Length, mf.Hashes = tf.Length, tf.Hashes
	ts.Signed.Meta["snapshot.json"] = mf
	tsJSON, err := signed(ts, keys.Timestamp)
	if err != nil {
		return err
	}
	return writeMeta(repo, "timestamp.json", tsJSON)
}

// Refresh keeps the repository's metadata from expiring without changing what it publishes: it re-signs the
// snapshot and the timestamp (next versions, fresh expiries), and the targets too when less than half of their
// lifetime is left. Operators run it at least daily.
func Refresh(repo string, keys *Keys, now time.Time) error {
	if err := checkKeys(repo, keys); err != nil {
		return err
	}
	targets, err := new(metadata.Metadata[metadata.TargetsType]).FromFile(metaPath(repo, "targets.json"))
	if err != nil {
		return fmt.Errorf("update repository: read targets: %w", err)
	}
	if targets.Signed.Expires.Before(now.Add(TargetsExpiry / 2)) {
		targets.Signed.Version++
		targets.Signed.Expires = expiry(now, TargetsExpiry)
	} else {
		targets = nil
	}
	return publish(repo, keys, targets, nil, now)
}

func readSnapshot(repo string) (*metadata.Metadata[metadata.SnapshotType], error) {
	s, err := new(metadata.Metadata[metadata.SnapshotType]).FromFile(metaPath(repo, "snapshot.json"))
	if err != nil {
		return nil, fmt.Errorf("update repository: read snapshot: %w", err)
	}
	return s, nil
}

// checkKeys checks that each key is the one the repository's root names for its role: signatures by another key
// would be refused by every client.
func checkKeys(repo string, keys *Keys) error {
	root, err := new(metadata.Metadata[metadata.RootType]).FromFile(metaPath(repo, "root.json"))
	if err != nil {
		return fmt.Errorf("update repository %s: read root: %w", repo, err)
	}
	for role, k := range keys.byRole() {
		key, err := metadata.KeyFromPublicKey(k.Public())
		if err != nil {
			return fmt.Errorf("update repository: %s key: %w", role, err)
		}
		id, err := key.ID()
		if err != nil {
			return fmt.Errorf("update repository: %s key: %w", role, err)
		}
		r := root.Signed.Roles[role]
		if r == nil || len(r.KeyIDs) != 1 || r.KeyIDs[0] != id {
			return fmt.Errorf("update repository %s: the %s key is not the one its root metadata trusts", repo, role)
		}
	}
	return nil
}

func metaPath(repo, name string) string { return filepath.Join(repo, MetadataDir, name) }

func writeMeta(repo, name string, data []byte) error { return writeFile(metaPath(repo, name), data) }

// writeFile writes data to path through a synced temporary file renamed into place.
func writeFile(path string, data []byte) error {
	return atomicfile.Write("write", path, data, 0o644, true)
}
