package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/update"
	"github.com/vitalgate/vitalgate/internal/updrepo"
)

// The commands of signed firmware updates (docs/updates.md#for-operators-publishing-an-image).

func setupUpdateInit(fs *flag.FlagSet) ([]string, func(io.Writer) error) {
	dir := fs.String("dir", "", "PKI `directory` (gets update-signing.key/.pub, tuf-keys/ and tuf-root.json)")
	repo := fs.String("repo", "", "update repository `directory` to create")
	key := keyFlag(fs)
	return []string{"dir", "repo"}, func(w io.Writer) error {
		alg, err := pki.ParseKeyAlg(*key)
		if err != nil {
			return usageError{err}
		}
		if _, err := os.Stat(filepath.Join(*repo, updrepo.MetadataDir, "root.json")); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("update repository %s: root metadata exists (a repository is initialised once)", *repo)
		}
		if err := pki.UpdateKeys(*dir, alg); err != nil {
			return err
		}
		keys, err := updrepo.LoadKeys(*dir)
		if err != nil {
			return err
		}
		root, err := updrepo.Init(*repo, keys, time.Now())
		if err != nil {
			return err
		}
		rootFile := filepath.Join(*dir, pki.FileTUFRoot)
		if err := os.WriteFile(rootFile, root, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", rootFile, err)
		}
		fmt.Fprintf(w, "wrote %s, %s, %s/ and %s (%s keys); repository %s\n",
			filepath.Join(*dir, pki.FileUpdateSigningKey), pki.FileUpdateSigningPub, pki.TUFKeysDir, pki.FileTUFRoot, alg, *repo)
		return nil
	}
}

func setupFirmware(fs *flag.FlagSet) ([]string, func(io.Writer) error) {
	dir := fs.String("dir", "", "PKI `directory` holding update-signing.key and tuf-keys/")
	repo := fs.String("repo", "", "update repository `directory` (certs update-init)")
	image := fs.String("image", "", "the firmware image `FILE`")
	model := fs.String("model", "", "device `MODEL` the image is for ([A-Za-z0-9._-]{1,64})")
	version := fs.String("version", "", "the image's semantic `VERSION` (1.2.3)")
	seq := fs.Uint64("seq", 0, "rollback counter: above every seq published for the model")
	vendor := fs.String("vendor", "VitalGate", "vendor `NAME` in the manifest")
	days := fs.Int("days", 90, "validity of the manifest in days")
	minBattery := fs.Int("min-battery", 0, "least battery percentage to install (0: no condition)")
	targets := fs.String("targets", "", "device IDs that may install it, comma-separated (default: every device of the model)")
	return []string{"dir", "repo", "image", "model", "version", "seq"}, func(w io.Writer) error {
		if *days < 1 {
			return usageError{fmt.Errorf("--days %d: want at least 1", *days)}
		}
		if *minBattery < 0 || *minBattery > 100 {
			return usageError{fmt.Errorf("--min-battery %d: want 0..100", *minBattery)}
		}
		data, err := os.ReadFile(*image)
		if err != nil {
			return fmt.Errorf("read image: %w", err)
		}
		signer, err := pki.LoadKey(filepath.Join(*dir, pki.FileUpdateSigningKey))
		if err != nil {
			return err
		}
		keys, err := updrepo.LoadKeys(*dir)
		if err != nil {
			return err
		}
		now := time.Now()
		m := &update.Manifest{Vendor: *vendor, Model: *model, Version: *version, Seq: *seq,
			NotAfter: now.Add(time.Duration(*days) * 24 * time.Hour).UnixMilli(), MinBattery: *minBattery, Targets: list(*targets)}
		if _, err := updrepo.Firmware(*repo, keys, signer, m, data, now); err != nil {
			return err
		}
		fmt.Fprintf(w, "published %s %s (seq %d, %d bytes): %s, %s in %s\n", *model, *version, *seq, len(data),
			updrepo.ImagePath(*model, *version), updrepo.ManifestPath(*model, *version), filepath.Join(*repo, updrepo.TargetsDir))
		return nil
	}
}

func setupUpdateRefresh(fs *flag.FlagSet) ([]string, func(io.Writer) error) {
	dir := fs.String("dir", "", "PKI `directory` holding tuf-keys/")
	repo := fs.String("repo", "", "update repository `directory`")
	return []string{"dir", "repo"}, func(w io.Writer) error {
		keys, err := updrepo.LoadKeys(*dir)
		if err != nil {
			return err
		}
		if err := updrepo.Refresh(*repo, keys, time.Now()); err != nil {
			return err
		}
		fmt.Fprintf(w, "re-signed the metadata of %s: the timestamp is valid for %s\n", *repo, updrepo.TimestampExpiry)
		return nil
	}
}
