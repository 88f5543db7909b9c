package pki

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// InitOptions configures [Init]. The zero value is a laptop deployment: site "site1", gateway "gw1", P-256 keys.
type InitOptions struct {
	Site      string   // the gateway's site (OU of gateway-client.crt); default "site1"
	GatewayID string   // the gateway's ID (CN of gateway-client.crt and gateway.crt); default "gw1"
	Hosts     []string // extra SANs of gateway.crt and broker.crt; localhost, 127.0.0.1 and ::1 are always there
	Key       KeyAlg   // algorithm of every key Init generates; default P256
	Force     bool     // replace an existing CA (and remove the device pairs it issued)
}

// Default values of [InitOptions].
const (
	DefaultSite      = "site1"
	DefaultGatewayID = "gw1"
)

// Init writes a complete PKI directory (docs/design.md#the-pki-directory): the root CA, the device and gateway CAs, an empty CRL
// signed by the device CA, the gateway's server and client certificates, the broker's server certificate, the
// app token key pair, and an empty devices directory.
//
// When dir already holds ca.crt, Init returns an error wrapping [ErrExists] unless o.Force is set; with Force it
// replaces everything, and removes the device pairs under devices/ because they chain to the replaced CA. ca.crt
// is written last, so an Init that fails half-way can be run again without Force.
func Init(dir string, o InitOptions) error {
	if err := o.check(); err != nil {
		return err
	}
	if dir == "" {
		return errors.New("empty PKI directory name")
	}
	caFile := filepath.Join(dir, FileCA)
	if exists(caFile) && !o.Force {
		return &existsError{path: caFile, hint: " (use --force to replace the CA)"}
	}
	for _, sub := range []string{DevicesDir, ManufacturersDir} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return fmt.Errorf("create PKI directory: %w", err)
		}
	}
	if o.Force {
		if err := removeDevices(dir); err != nil {
			return err
		}
	}
	files, err := generateFiles(o, time.Now())
	if err != nil {
		return err
	}
	return writeFiles(dir, files)
}

// check fills in the defaults of o and rejects a site, gateway ID or key algorithm Init cannot use.
func (o *InitOptions) check() error {
	if o.Site == "" {
		o.Site = DefaultSite
	}
	if o.GatewayID == "" {
		o.GatewayID = DefaultGatewayID
	}
	if !ValidDeviceID(o.Site) { // the site is a topic level: the same alphabet as IDs
		return fmt.Errorf("invalid site %q (want "+idSyntax+")", o.Site)
	}
	if !ValidDeviceID(o.GatewayID) {
		return fmt.Errorf("invalid gateway ID %q (want "+idSyntax+")", o.GatewayID)
	}
	if _, err := ParseKeyAlg(string(o.Key)); err != nil {
		return err
	}
	return nil
}

// pkiFile is one file Init writes: its name in the PKI directory and its content.
type pkiFile struct {
	name string
	data []byte
}

// initBuilder collects the files of a new PKI directory in the order Init generates them.
type initBuilder struct {
	alg   KeyAlg
	now   time.Time
	files []pkiFile
}

// add appends the file name with content data.
func (b *initBuilder) add(name string, data []byte) { b.files = append(b.files, pkiFile{name, data}) }

// pair generates a key and has ca (nil: self-signed) sign a certificate of profile p for it.
func (b *initBuilder) pair(ca *issuer, p Profile, r Request, certName, keyName string) (*issuer, error) {
	key, err := generateKey(b.alg)
	if err != nil {
		return nil, fmt.Errorf("generate %s key: %w", p.Name, err)
	}
	cert, der, err := ca.sign(p, r, key.Public(), key, b.now)
	if err != nil {
		return nil, err
	}
	kb, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	if keyName != "" { // "": the key is not kept
		b.add(keyName, kb)
	}
	b.add(certName, encodeCert(der))
	return &issuer{cert: cert, key: key}, nil
}

// generateFiles generates the keys, certificates and CRL of a new PKI directory for o, issued at now.
func generateFiles(o InitOptions, now time.Time) ([]pkiFile, error) {
	b := &initBuilder{alg: o.Key, now: now}
	// The root key is not kept (docs/design.md#the-pki-directory has no ca.key): nothing signs with the root after Init.
	root, err := b.pair(nil, Profiles.Root, Request{CommonName: "VitalGate Root CA"}, FileCA, "")
	if err != nil {
		return nil, err
	}
	devCA, err := b.pair(root, Profiles.DeviceCA, Request{CommonName: "VitalGate Device CA"}, FileDeviceCA, FileDeviceCAKey)
	if err != nil {
		return nil, err
	}
	issuing, err := b.pair(devCA, Profiles.IssuingCA, Request{CommonName: "VitalGate Issuing CA " + o.GatewayID}, FileIssuingCA, FileIssuingCAKey)
	if err != nil {
		return nil, err
	}
	gwCA, err := b.pair(root, Profiles.GatewayCA, Request{CommonName: "VitalGate Gateway CA"}, FileGatewayCA, FileGatewayCAKey)
	if err != nil {
		return nil, err
	}
	if _, err := b.pair(root, Profiles.GatewayServer, Request{CommonName: o.GatewayID, OrgUnit: o.Site, Hosts: o.Hosts}, FileGateway, FileGatewayKey); err != nil {
		return nil, err
	}
	if _, err := b.pair(gwCA, Profiles.GatewayClient, Request{CommonName: o.GatewayID, OrgUnit: o.Site}, FileGatewayClient, FileGatewayClientKey); err != nil {
		return nil, err
	}
	if _, err := b.pair(root, Profiles.BrokerServer, Request{CommonName: "vitalgate-broker", Hosts: o.Hosts}, FileBroker, FileBrokerKey); err != nil {
		return nil, err
	}
	crl, err := signCRL(devCA, nil, nil, now)
	if err != nil {
		return nil, err
	}
	b.add(FileCRL, crl)
	if crl, err = signIssuingCRL(issuing, &x509.RevocationList{}, now); err != nil { // 7 days, re-signed by the gateway
		return nil, err
	}
	b.add(FileIssuingCRL, crl)
	if crl, err = signCRL(gwCA, nil, nil, now); err != nil {
		return nil, err
	}
	b.add(FileGatewayCRL, crl)
	b.add(FileRevokedTokens, []byte("# revoked app tokens: one jti a line\n"))
	b.add(FileEnroll, []byte("# the enrolment allow-list: which factory identity may enrol as which device ID\n[]\n"))
	tokKey, tokPub, err := tokenKeyPair(o.Key)
	if err != nil {
		return nil, err
	}
	b.add(FileAppTokenKey, tokKey)
	b.add(FileAppTokenPub, tokPub)
	return b.files, nil
}

// tokenKeyPair generates the app token key pair: the PEM private key and the PEM PKIX public key.
func tokenKeyPair(alg KeyAlg) (key, pub []byte, err error) {
	tok, err := generateKey(alg)
	if err != nil {
		return nil, nil, fmt.Errorf("generate token key: %w", err)
	}
	key, err = encodeKey(tok)
	if err != nil {
		return nil, nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(tok.Public())
	if err != nil {
		return nil, nil, fmt.Errorf("marshal token public key: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), nil
}

// writeFiles writes files into dir, keys readable by the owner only. Everything but ca.crt goes first, so that a
// failure leaves no ca.crt behind (or the old one, with Force).
func writeFiles(dir string, files []pkiFile) error {
	var ca []byte
	for _, f := range files {
		if f.name == FileCA {
			ca = f.data
			continue
		}
		perm := os.FileMode(0o644)
		if strings.HasSuffix(f.name, ".key") {
			perm = 0o600
		}
		if err := writeFile(filepath.Join(dir, f.name), f.data, perm, true); err != nil {
			return err
		}
	}
	return writeFile(filepath.Join(dir, FileCA), ca, 0o644, true)
}

// removeDevices deletes the device pairs under dir/devices (Init --force: they chain to the replaced CA).
func removeDevices(dir string) error {
	ents, err := os.ReadDir(filepath.Join(dir, DevicesDir))
	if err != nil {
		return fmt.Errorf("read devices directory: %w", err)
	}
	for _, e := range ents {
		n := e.Name()
		if e.Type().IsRegular() && (strings.HasSuffix(n, ".crt") || strings.HasSuffix(n, ".key")) {
			if err := os.Remove(filepath.Join(dir, DevicesDir, n)); err != nil {
				return fmt.Errorf("remove old device file: %w", err)
			}
		}
	}
	return nil
}
