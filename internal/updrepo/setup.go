package updrepo

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/update"
)

// Setup does what `certs update-init` does: it writes the update keys
// (alg) into the PKI directory pkiDir, a new repository in repo, and the
// repository's root of trust pki.FileTUFRoot. It refuses a repository that
// exists.
func Setup(pkiDir, repo string, alg pki.KeyAlg, now time.Time) error {
	if _, err := os.Stat(filepath.Join(repo, MetadataDir, "root.json")); !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("update repository %s: root metadata exists (a repository is initialised once)", repo)
	}
	if err := pki.UpdateKeys(pkiDir, alg); err != nil {
		return err
	}
	keys, err := LoadKeys(pkiDir)
	if err != nil {
		return err
	}
	root, err := Init(repo, keys, now)
	if err != nil {
		return err
	}
	rootFile := filepath.Join(pkiDir, pki.FileTUFRoot)
	if err := os.WriteFile(rootFile, root, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", rootFile, err)
	}
	return nil
}

// Publish does what `certs firmware` does: it signs m (its Digest and Size
// taken from image) with the PKI directory's update-signing.key and adds
// image and manifest to repo with the keys of pkiDir/tuf-keys. It returns
// the manifest.
func Publish(pkiDir, repo string, m *update.Manifest, image []byte, now time.Time) ([]byte, error) {
	signer, err := pki.LoadKey(filepath.Join(pkiDir, pki.FileUpdateSigningKey))
	if err != nil {
		return nil, err
	}
	keys, err := LoadKeys(pkiDir)
	if err != nil {
		return nil, err
	}
	return Firmware(repo, keys, signer, m, image, now)
}
