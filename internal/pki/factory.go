package pki

import (
	"cmp"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Factory identities (IEEE 802.1AR IDevIDs) stand for what a manufacturer puts on a device before it ships: a
// self-signed manufacturer CA (manufacturers/NAME.crt, its key factory/NAME-ca.key) signs one identity per
// device (factory/ID.crt and factory/ID.key) whose subject serialNumber is listed in the allow-list enroll.yaml
// as the device ID it may enrol as. A real site holds only manufacturers/NAME.crt and enroll.yaml; the keys under
// factory/ are for tests and the simulator.

// Defaults of [FactoryOptions].
const (
	DefaultManufacturer = "acme"
	// FactoryValidity is the default lifetime of a factory identity.
	FactoryValidity = 15 * 365 * 24 * time.Hour
	// ManufacturerValidity is the lifetime of a manufacturer CA [NewManufacturer] creates: longer than any
	// identity it signs (a certificate never outlives its issuer).
	ManufacturerValidity = 30 * 365 * 24 * time.Hour
)

// factoryProfiles are the certificate profiles of factory identities: a manufacturer CA (path length 0, client
// auth only) and the IDevIDs it signs.
var factoryProfiles = struct{ Manufacturer, IDevID Profile }{
	Manufacturer: Profile{Name: "manufacturer CA", IsCA: true, MaxPathLen: 0,
		KeyUsage:    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Validity: ManufacturerValidity},
	IDevID: Profile{Name: "factory identity", KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Validity: FactoryValidity},
}

// FactoryPaths returns the factory identity files of device id in the PKI directory dir.
func FactoryPaths(dir, id string) (certFile, keyFile string) {
	base := filepath.Join(dir, FactoryDir, id)
	return base + ".crt", base + ".key"
}

// manufacturerPaths returns the certificate and key files of manufacturer name.
func manufacturerPaths(dir, name string) (certFile, keyFile string) {
	return filepath.Join(dir, ManufacturersDir, name+".crt"), filepath.Join(dir, FactoryDir, name+"-ca.key")
}

// NewManufacturer creates the manufacturer CA name (CN "NAME Manufacturer CA", O = NAME, self-signed, path length
// 0, client auth) with a key of algorithm alg: manufacturers/NAME.crt and factory/NAME-ca.key (mode 0600). A
// manufacturer whose certificate exists is left as it is (nil). It holds the PKI directory's writer lock.
func NewManufacturer(dir, name string, alg KeyAlg) error {
	release, err := LockDir(dir)
	if err != nil {
		return err
	}
	defer release()
	return newManufacturer(dir, name, alg)
}

// newManufacturer is [NewManufacturer] for a caller that holds the writer lock.
func newManufacturer(dir, name string, alg KeyAlg) error {
	if !ValidDeviceID(name) {
		return fmt.Errorf("invalid manufacturer name %q (want "+idSyntax+")", name)
	}
	if _, err := ParseKeyAlg(string(alg)); err != nil {
		return err
	}
	certFile, keyFile := manufacturerPaths(dir, name)
	if exists(certFile) {
		return nil
	}
	for _, sub := range []string{ManufacturersDir, FactoryDir} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", sub, err)
		}
	}
	key, err := generateKey(alg)
	if err != nil {
		return fmt.Errorf("generate manufacturer key: %w", err)
	}
	r := Request{CommonName: name + " Manufacturer CA", Organization: name}
	_, der, err := (*issuer)(nil).sign(factoryProfiles.Manufacturer, r, key.Public(), key, time.Now())
	if err != nil {
		return fmt.Errorf("manufacturer %s: %w", name, err)
	}
	kb, err := encodeKey(key)
	if err != nil {
		return err
	}
	if err := writeFile(keyFile, kb, 0o600, true); err != nil { // the key first: a certificate implies its key
		return err
	}
	return writeFile(certFile, encodeCert(der), 0o644, true)
}

// FactoryOptions configures [IssueFactory].
type FactoryOptions struct {
	Manufacturer string // default DefaultManufacturer
	Count        int    // number of devices, 1 to MaxBulkDevices
	Prefix       string // device IDs are Prefix-{Start}, ... with five digits (default DefaultDevicePrefix)
	Key          KeyAlg // of the manufacturer (when new) and of the identities; default P256
	Days         int    // validity in days; 0: 15 years
	Start        int    // number of the first device ID; 0: 1
}

// IssueFactory issues factory identities for devices Prefix-{Start} to Prefix-{Start+Count-1}, signed by the
// manufacturer (created first when new), and lists each in enroll.yaml as the device ID it may enrol as. An
// identity's subject CN and serialNumber are "NAME-%08d" (NAME upper-case, O = NAME), numbered on from the
// highest the manufacturer issued in this directory, so runs never reuse a serial. IDs that have an identity are
// skipped (and listed if they are not). It returns the allow-list entries of every ID asked for, in order.
//
// The work holds the PKI directory's writer lock and runs on runtime.NumCPU() workers; files are written in place
// without fsync, like [IssueBulk], and an interrupted run is completed by running it again.
func IssueFactory(dir string, o FactoryOptions) ([]AllowEntry, error) {
	ids, v, err := o.check()
	if err != nil {
		return nil, err
	}
	release, err := LockDir(dir)
	if err != nil {
		return nil, err
	}
	defer release()
	if err := newManufacturer(dir, o.Manufacturer, o.Key); err != nil {
		return nil, err
	}
	certFile, keyFile := manufacturerPaths(dir, o.Manufacturer)
	ca, err := loadIssuer(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("manufacturer %s: %w", o.Manufacturer, err)
	}
	entries, todo, err := factoryPlan(dir, o.Manufacturer, ca, ids)
	if err != nil {
		return nil, err
	}
	if err := ca.issueFactory(dir, o.Manufacturer, o.Key, v, entries, todo); err != nil {
		return nil, err
	}
	if err := appendAllowList(dir, entries); err != nil {
		return nil, err
	}
	return entries, nil
}

// check fills in the defaults of o and returns the device IDs it names and the validity of the identities.
func (o *FactoryOptions) check() ([]string, time.Duration, error) {
	if o.Manufacturer == "" {
		o.Manufacturer = DefaultManufacturer
	}
	if o.Prefix == "" {
		o.Prefix = DefaultDevicePrefix
	}
	if o.Start == 0 {
		o.Start = 1
	}
	if o.Count < 1 || o.Count > MaxBulkDevices {
		return nil, 0, fmt.Errorf("count %d out of range 1..%d", o.Count, MaxBulkDevices)
	}
	if o.Start < 0 || o.Start > MaxBulkDevices {
		return nil, 0, fmt.Errorf("start %d out of range 1..%d", o.Start, MaxBulkDevices)
	}
	if !ValidDeviceID(o.Manufacturer) {
		return nil, 0, fmt.Errorf("invalid manufacturer name %q (want "+idSyntax+")", o.Manufacturer)
	}
	if last := bulkID(o.Prefix, o.Start+o.Count-1); !ValidDeviceID(last) {
		return nil, 0, fmt.Errorf("invalid prefix %q: device ID %q is not [A-Za-z0-9._-]{1,64}", o.Prefix, last)
	}
	if _, err := ParseKeyAlg(string(o.Key)); err != nil {
		return nil, 0, err
	}
	v, err := validity(o.Days)
	if err != nil {
		return nil, 0, err
	}
	ids := make([]string, o.Count)
	for i := range ids { // PREFIX-NNNNN never ends in "-ca": no ID names a manufacturer's key file
		ids[i] = bulkID(o.Prefix, o.Start+i)
	}
	return ids, v, nil
}

// factorySerial formats the n-th factory identity serial of manufacturer name.
func factorySerial(name string, n int) string {
	return fmt.Sprintf("%s-%08d", strings.ToUpper(name), n)
}

// factorySerialNumber returns n when serial is factorySerial(name, n), else 0.
func factorySerialNumber(name, serial string) int {
	digits, ok := strings.CutPrefix(serial, strings.ToUpper(name)+"-")
	if !ok || len(digits) < 8 {
		return 0
	}
	n, err := strconv.Atoi(digits)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// identitySerial is the allow-list serial of a factory identity: its subject serialNumber, or else its
// certificate serial in lowercase hex.
func identitySerial(c *x509.Certificate) string {
	if c.Subject.SerialNumber != "" {
		return c.Subject.SerialNumber
	}
	return c.SerialNumber.Text(16)
}

// factoryPlan returns the allow-list entries of ids and the indexes of those that need an identity. Existing
// identities give their serial; new ones are numbered on from the highest serial of the manufacturer in the
// allow-list or among the identities under factory/.
func factoryPlan(dir, name string, ca *issuer, ids []string) (entries []AllowEntry, todo []int, err error) {
	next, err := highestFactorySerial(dir, name, ca)
	if err != nil {
		return nil, nil, err
	}
	entries = make([]AllowEntry, len(ids))
	for i, id := range ids {
		entries[i].ID, entries[i].Manufacturer = id, name
		certFile, keyFile := FactoryPaths(dir, id)
		if nonEmpty(certFile) && nonEmpty(keyFile) {
			c, err := LoadCert(certFile)
			if err != nil {
				return nil, nil, fmt.Errorf("factory identity of %s: %w", id, err)
			}
			entries[i].Serial = identitySerial(c)
			continue
		}
		next++
		entries[i].Serial = factorySerial(name, next)
		todo = append(todo, i)
	}
	return entries, todo, nil
}

// highestFactorySerial returns the highest number of a serial of manufacturer name (see factorySerial) in the
// allow-list or among the identities under factory/ that ca signed; 0 when there is none.
func highestFactorySerial(dir, name string, ca *issuer) (int, error) {
	list, err := ReadAllowList(filepath.Join(dir, FileEnroll))
	if err != nil {
		return 0, err
	}
	high := 0
	for _, e := range list {
		high = max(high, factorySerialNumber(name, e.Serial))
	}
	ents, err := os.ReadDir(filepath.Join(dir, FactoryDir))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", FactoryDir, err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), ".crt") {
			continue
		}
		c, err := LoadCert(filepath.Join(dir, FactoryDir, e.Name()))
		if err != nil {
			continue // an interrupted pair: it is issued again
		}
		if string(c.RawIssuer) == string(ca.cert.RawSubject) {
			high = max(high, factorySerialNumber(name, c.Subject.SerialNumber))
		}
	}
	return high, nil
}

// issueFactory signs and writes the identities of entries[i] for every i of todo on runtime.NumCPU() workers.
func (ca *issuer) issueFactory(dir, name string, alg KeyAlg, v time.Duration, entries []AllowEntry, todo []int) error {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		work     = make(chan int)
	)
	now := time.Now()
	for range min(runtime.NumCPU(), max(len(todo), 1)) {
		wg.Go(func() {
			for i := range work {
				if err := ca.issueIdentity(dir, name, alg, v, entries[i], now); err != nil {
					mu.Lock()
					firstErr = cmp.Or(firstErr, err)
					mu.Unlock()
				}
			}
		})
	}
	for _, i := range todo {
		mu.Lock()
		failed := firstErr != nil
		mu.Unlock()
		if failed {
			break
		}
		work <- i
	}
	close(work)
	wg.Wait()
	return firstErr
}

// issueIdentity generates the key and factory identity of e and writes them in place, key first.
func (ca *issuer) issueIdentity(dir, name string, alg KeyAlg, v time.Duration, e AllowEntry, now time.Time) error {
	key, err := generateKey(alg)
	if err != nil {
		return fmt.Errorf("generate factory key: %w", err)
	}
	r := Request{CommonName: e.Serial, Organization: name, SerialNumber: e.Serial, Validity: v}
	_, der, err := ca.sign(factoryProfiles.IDevID, r, key.Public(), nil, now)
	if err != nil {
		return fmt.Errorf("factory identity of %s: %w", e.ID, err)
	}
	kb, err := encodeKey(key)
	if err != nil {
		return err
	}
	certFile, keyFile := FactoryPaths(dir, e.ID)
	_ = os.Remove(certFile) // a leftover certificate must not pair with the new key, even for a moment
	if err := createFile(keyFile, kb, 0o600); err != nil {
		return err
	}
	return createFile(certFile, encodeCert(der), 0o644)
}
