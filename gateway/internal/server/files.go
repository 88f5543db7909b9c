package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/internal/cloud"
	"github.com/vitalgate/vitalgate/internal/fileerr"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"
)

// files is what the files a configuration names hold, loaded and checked:
// the gateway's identity, the devices' trust, the TLS of both sides, the
// schemas, and the embedded cloud broker (built, not started) when no cloud
// is configured. [New] starts from it and [Check] stops at it, so that
// --check-config loads exactly what a start loads.
type files struct {
	site, id  string
	mismatch  error            // the configured identity differs from the certificate's (a warning: a cloud is configured)
	rev       *pki.Revocations // the device CA's list (crl.pem)
	issuing   *pki.IssuingCA   // signs enrolled devices' certificates
	issRev    *pki.Revocations // the issuing CA's list (issuing-crl.pem)
	deviceTLS *tls.Config
	cloudTLS  *tls.Config
	schemas   *telemetry.Schemas
	cloud     *cloud.Broker

	// Stamps (mtime, size) of crl.pem, issuing-crl.pem and the schema
	// file, taken before their first load: a change after it, even one made
	// before the watcher starts, is seen as a change.
	crlStamp, issCRLStamp, schemaStamp string
}

// loadFiles loads every file cfg names and reports every problem at once,
// each file named once. It binds no port and opens no queue.
func loadFiles(cfg config.Config, log *slog.Logger) (*files, error) {
	if err := pkiPresent(cfg.PKI); err != nil {
		return nil, err
	}
	f := &files{}
	errs := []error{
		f.loadIdentity(cfg),
		f.loadDeviceTrust(cfg),
		f.loadSchemas(cfg),
		f.loadEmbeddedCloud(cfg, log),
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return f, nil
}

// loadIdentity reads the gateway client certificate, which names the
// gateway's site and ID and is its certificate towards the cloud.
func (f *files) loadIdentity(cfg config.Config) error {
	path := filepath.Join(cfg.PKI, pki.FileGatewayClient)
	cert, err := pki.LoadCert(path)
	if err != nil {
		return fmt.Errorf("gateway client certificate: %w", err)
	}
	f.site, f.id = pki.ParseSiteAndID(cert)
	var errs []error
	if f.mismatch = identityMismatch(cfg, f.site, f.id); f.mismatch != nil && len(cfg.Cloud) == 0 {
		errs = append(errs, fmt.Errorf("embedded cloud broker: %w", f.mismatch))
	}
	if cfg.Site != "" {
		f.site = cfg.Site
	}
	if cfg.ID != "" {
		f.id = cfg.ID
	}
	if f.site == "" || f.id == "" {
		errs = append(errs, fmt.Errorf("%s names no site (OU) or gateway ID (CN), and none is configured", path))
	}
	f.cloudTLS, err = pki.ClientTLS(filepath.Join(cfg.PKI, pki.FileCA), path, filepath.Join(cfg.PKI, pki.FileGatewayClientKey))
	if err != nil {
		errs = append(errs, fmt.Errorf("cloud client TLS: %w", err))
	}
	return errors.Join(errs...)
}

// loadDeviceTrust loads what the device listener needs: devices chain to
// the device CA, directly or through the gateway's issuing CA (a device may
// send its leaf alone), and are on neither CA's revocation list; the
// gateway serves its server certificate with the configured key exchanges.
func (f *files) loadDeviceTrust(cfg config.Config) error {
	p := func(name string) string { return filepath.Join(cfg.PKI, name) }
	ca, err := pki.LoadCert(p(pki.FileDeviceCA))
	if err != nil {
		return fmt.Errorf("device CA: %w", err)
	}
	var errs []error
	f.crlStamp, f.issCRLStamp = stamp(p(pki.FileCRL)), stamp(p(pki.FileIssuingCRL))
	if f.rev, err = pki.NewRevocations(p(pki.FileCRL), ca); err != nil {
		errs = append(errs, fmt.Errorf("revocation list: %w", err))
	}
	if f.issuing, err = pki.OpenIssuingCA(cfg.PKI); err != nil {
		return errors.Join(append(errs, err)...)
	}
	if f.issRev, err = pki.NewRevocations(p(pki.FileIssuingCRL), f.issuing.Cert()); err != nil {
		errs = append(errs, fmt.Errorf("issuing CA revocation list: %w", err))
	}
	pool, err := pki.LoadPool(p(pki.FileDeviceCA), p(pki.FileIssuingCA))
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("device CA: %w", err))...)
	}
	if f.deviceTLS, err = pki.ServerTLS(p(pki.FileGateway), p(pki.FileGatewayKey), pool, f.rev); err != nil {
		return errors.Join(append(errs, fmt.Errorf("device listener TLS: %w", err))...)
	}
	f.deviceTLS.VerifyConnection = f.refuseRevoked
	return errors.Join(append(errs, setCurves(f.deviceTLS, cfg.Curves))...)
}

// revoked reports whether c is on the device CA's or the issuing CA's
// revocation list (serials are random 128-bit numbers: one list's serial
// never names the other CA's certificate).
func (f *files) revoked(c *x509.Certificate) bool {
	return f.rev.IsRevoked(c.SerialNumber) || (f.issRev != nil && f.issRev.IsRevoked(c.SerialNumber))
}

// refuseRevoked is the device listener's VerifyConnection: it refuses a
// client whose leaf is revoked by either list, also on resumed sessions.
func (f *files) refuseRevoked(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return nil // ClientAuth requires one
	}
	if leaf := cs.PeerCertificates[0]; f.revoked(leaf) {
		return fmt.Errorf("client certificate of %q (serial %x) is revoked", leaf.Subject.CommonName, leaf.SerialNumber)
	}
	return nil
}

// loadSchemas loads the configured schema file, or takes the built-in
// schemas.
func (f *files) loadSchemas(cfg config.Config) (err error) {
	f.schemaStamp = stamp(cfg.Schemas)
	f.schemas, err = loadSchemas(cfg.Schemas)
	return err
}

// loadSchemas returns the schemas of path, or the built-in ones for "".
func loadSchemas(path string) (*telemetry.Schemas, error) {
	if path == "" {
		return telemetry.DefaultSchemas(), nil
	}
	return telemetry.LoadSchemas(path) // names the file
}

// loadEmbeddedCloud builds the cloud broker the gateway starts when no
// cloud is configured: its certificate, key, gateway CA and token key are
// loaded and its addresses checked, none bound.
func (f *files) loadEmbeddedCloud(cfg config.Config, log *slog.Logger) (err error) {
	if len(cfg.Cloud) > 0 {
		return nil
	}
	if f.cloud, err = cloud.New(embeddedCloud(cfg), log); err != nil {
		return fmt.Errorf("embedded cloud broker: %w", err)
	}
	return nil
}

// pkiPresent checks that dir holds a PKI at all (its ca.crt), so that a
// mistyped --pki is one error that says what to do rather than a missing
// file per certificate.
func pkiPresent(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, pki.FileCA)); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no PKI in %s (no %s): create one with `certs init --dir %s --site SITE --gateway-id ID`, or point --pki at the deployment's",
			dir, pki.FileCA, dir)
	}
	return nil
}

// identityMismatch says how the configured site and ID differ from those of
// the gateway client certificate (certSite, certID). The embedded broker,
// like the standalone one, binds a gateway to its certificate: a gateway
// configured otherwise would be refused at every reconnect while its queue
// grows.
func identityMismatch(cfg config.Config, certSite, certID string) error {
	var errs []error
	if cfg.Site != "" && certSite != "" && cfg.Site != certSite {
		errs = append(errs, fmt.Errorf("site %q differs from the certificate's OU %q", cfg.Site, certSite))
	}
	if cfg.ID != "" && certID != "" && cfg.ID != certID {
		errs = append(errs, fmt.Errorf("gateway ID %q differs from the certificate's CN %q", cfg.ID, certID))
	}
	return errors.Join(errs...)
}

// prepareData creates the data directory if needed and checks that it can
// be written.
func prepareData(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fileerr.Wrap("create data directory", dir, err)
	}
	f, err := os.CreateTemp(dir, ".check-*")
	if err != nil {
		return fileerr.Wrap("write to data directory", dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

// Check loads every file the configuration names (certificates, keys, the
// revocation list, schemas, and the embedded cloud broker's files when no
// cloud is configured) as [New] does, and checks the data directory, without
// opening the queue or binding a port, so it can run beside a live gateway.
func Check(cfg config.Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	_, err := loadFiles(cfg, slog.New(slog.DiscardHandler))
	return errors.Join(err, prepareData(cfg.Data))
}
