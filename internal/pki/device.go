package pki

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// MaxBulkDevices bounds one [IssueDevices] call.
const MaxBulkDevices = 1_000_000

// DefaultDevicePrefix is the ID prefix of [IssueDevices] when none is given.
const DefaultDevicePrefix = "dev"

// DevicePaths returns the certificate and key files of device id in the PKI directory dir.
func DevicePaths(dir, id string) (certFile, keyFile string) {
	base := filepath.Join(dir, DevicesDir, id)
	return base + ".crt", base + ".key"
}

// idSyntax describes, in errors, what [ValidDeviceID] accepts.
const idSyntax = "[A-Za-z0-9._-]{1,64}, not . or .."

// ValidDeviceID reports whether id is a device ID: 1 to 64 of [A-Za-z0-9._-],
// but not "." or "..". An ID names files (devices/ID.crt, devices/ID.key, see
// [DevicePaths]), and "." or ".." would name the devices directory or the
// PKI directory itself: `certs device --id ..` wrote pki.crt and pki.key
// beside the PKI directory. The same check keeps them out of sites and
// gateway IDs, which are topic levels.
func ValidDeviceID(id string) bool {
	if len(id) == 0 || len(id) > 64 || id == "." || id == ".." {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ParseSiteAndID returns the site (first OU) and the ID (CN) of a gateway client certificate.
func ParseSiteAndID(cert *x509.Certificate) (site, id string) {
	if cert == nil {
		return "", ""
	}
	if len(cert.Subject.OrganizationalUnit) > 0 {
		site = cert.Subject.OrganizationalUnit[0]
	}
	return site, cert.Subject.CommonName
}

// validity converts a --days value: 0 means the profile default, negative is an error.
func validity(days int) (time.Duration, error) {
	if days < 0 {
		return 0, fmt.Errorf("days %d is negative", days)
	}
	if days > 100*365 {
		return 0, fmt.Errorf("days %d is too many", days)
	}
	return time.Duration(days) * 24 * time.Hour, nil
}

// IssueDevice issues a certificate for device id (CN = id, client auth, signed by the device CA) with a fresh key
// of algorithm key, valid for days days (0: 365), and writes devices/ID.crt and devices/ID.key (mode 0600).
// It refuses with an error wrapping [ErrExists] when the device's certificate exists: revoke it and remove the
// pair to issue a new one.
func IssueDevice(dir, id string, key KeyAlg, days int) error {
	if !ValidDeviceID(id) {
		return fmt.Errorf("invalid device ID %q (want "+idSyntax+")", id)
	}
	if _, err := ParseKeyAlg(string(key)); err != nil {
		return err
	}
	v, err := validity(days)
	if err != nil {
		return err
	}
	certFile, _ := DevicePaths(dir, id)
	if exists(certFile) {
		return &existsError{path: certFile, hint: " (revoke the device and remove its files to issue a new one)"}
	}
	ca, err := loadIssuer(filepath.Join(dir, FileDeviceCA), filepath.Join(dir, FileDeviceCAKey))
	if err != nil {
		return fmt.Errorf("device CA: %w", err)
	}
	return ca.issueDevice(dir, id, key, v, time.Now(), false)
}

// issueDevice generates the key and certificate of one device and writes them, key first, so that an existing
// certificate implies an existing key. bulk writes in place (see createFile) instead of through a rename, without
// fsync.
func (ca *issuer) issueDevice(dir, id string, alg KeyAlg, v time.Duration, now time.Time, bulk bool) error {
	key, err := generateKey(alg)
	if err != nil {
		return fmt.Errorf("generate device key: %w", err)
	}
	_, der, err := ca.sign(Profiles.Device, Request{CommonName: id, Validity: v}, key.Public(), nil, now)
	if err != nil {
		return fmt.Errorf("device %s: %w", id, err)
	}
	certFile, keyFile := DevicePaths(dir, id)
	kb, err := encodeKey(key)
	if err != nil {
		return err
	}
	if bulk {
		_ = os.Remove(certFile) // a leftover certificate must not pair with the new key, even for a moment
		if err := createFile(keyFile, kb, 0o600); err != nil {
			return err
		}
		return createFile(certFile, encodeCert(der), 0o644)
	}
	if err := writeFile(keyFile, kb, 0o600, true); err != nil {
		return err
	}
	return writeFile(certFile, encodeCert(der), 0o644, true)
}

// BulkOptions configures [IssueBulk].
type BulkOptions struct {
	Count   int    // number of devices, 1 to MaxBulkDevices
	Prefix  string // IDs are Prefix-00001 ... (default DefaultDevicePrefix)
	Key     KeyAlg // default P256
	Days    int    // validity in days; 0: 365
	Workers int    // parallel signers; 0: runtime.NumCPU()
}

// BulkResult reports an [IssueBulk] run.
type BulkResult struct {
	IDs     []string // every ID of the fleet, in order, issued now or before
	Issued  int      // pairs written by this call
	Skipped int      // IDs whose certificate and key existed already
}

// IssueDevices issues devices prefix-00001 to prefix-{count} (prefix "" is "dev") with keys of algorithm key,
// skipping IDs whose certificate and key exist (non-empty), and returns every ID of the fleet. The device CA is
// loaded once and the work runs on runtime.NumCPU() workers: 10,000 P-256 devices take seconds. Files are written
// in place without fsync, for speed: a run that was interrupted is completed by running it again.
func IssueDevices(dir string, count int, prefix string, key KeyAlg) ([]string, error) {
	r, err := IssueBulk(dir, BulkOptions{Count: count, Prefix: prefix, Key: key})
	return r.IDs, err
}

// bulkID formats the i-th (1-based) ID of a fleet.
func bulkID(prefix string, i int) string { return fmt.Sprintf("%s-%05d", prefix, i) }

// IssueBulk is [IssueDevices] with every option and a count of what it did.
func IssueBulk(dir string, o BulkOptions) (BulkResult, error) {
	if o.Prefix == "" {
		o.Prefix = DefaultDevicePrefix
	}
	if o.Count < 1 || o.Count > MaxBulkDevices {
		return BulkResult{}, fmt.Errorf("count %d out of range 1..%d", o.Count, MaxBulkDevices)
	}
	if last := bulkID(o.Prefix, o.Count); !ValidDeviceID(last) {
		return BulkResult{}, fmt.Errorf("invalid prefix %q: device ID %q is not [A-Za-z0-9._-]{1,64}", o.Prefix, last)
	}
	if _, err := ParseKeyAlg(string(o.Key)); err != nil {
		return BulkResult{}, err
	}
	v, err := validity(o.Days)
	if err != nil {
		return BulkResult{}, err
	}
	ca, err := loadIssuer(filepath.Join(dir, FileDeviceCA), filepath.Join(dir, FileDeviceCAKey))
	if err != nil {
		return BulkResult{}, fmt.Errorf("device CA: %w", err)
	}
	workers := o.Workers
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	workers = min(workers, o.Count)

	res := BulkResult{IDs: make([]string, o.Count)}
	for i := range res.IDs {
		res.IDs[i] = bulkID(o.Prefix, i+1)
	}
	now := time.Now()
	var (
		next, issued, skipped atomic.Int64
		failed                atomic.Bool
		errOnce               sync.Once
		firstErr              error
		wg                    sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for !failed.Load() {
				i := int(next.Add(1)) - 1
				if i >= o.Count {
					return
				}
				id := res.IDs[i]
				certFile, keyFile := DevicePaths(dir, id)
				if nonEmpty(certFile) && nonEmpty(keyFile) {
					skipped.Add(1)
					continue
				}
				if err := ca.issueDevice(dir, id, o.Key, v, now, true); err != nil {
					errOnce.Do(func() { firstErr = err })
					failed.Store(true)
					return
				}
				issued.Add(1)
			}
		})
	}
	wg.Wait()
	res.Issued, res.Skipped = int(issued.Load()), int(skipped.Load())
	if firstErr != nil {
		return res, fmt.Errorf("after %d of %d devices: %w", res.Issued+res.Skipped, o.Count, firstErr)
	}
	return res, nil
}
