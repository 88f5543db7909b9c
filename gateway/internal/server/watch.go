package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// Reload re-reads the revocation lists and the schemas (SIGHUP), and closes
// the connections of devices revoked since they connected.
func (g *Gateway) Reload() error {
	var errs []error
	if err := g.rev.Reload(); err != nil {
		errs = append(errs, fmt.Errorf("reload revocation list: %w", err))
	}
	if err := g.files.issRev.Reload(); err != nil {
		errs = append(errs, fmt.Errorf("reload issuing CA revocation list: %w", err))
	}
	if n := g.hook.DropRevoked(); n > 0 {
		g.log.Warn("revoked devices disconnected", "count", n)
	}
	if err := g.reloadSchemas(); err != nil {
		errs = append(errs, fmt.Errorf("reload schemas: %w", err))
	}
	return errors.Join(errs...)
}

// reloadSchemas loads the schema file again and swaps it in; on an error
// the previous schemas stay.
func (g *Gateway) reloadSchemas() error {
	s, err := loadSchemas(g.cfg.Schemas)
	if err != nil {
		return err
	}
	g.schemas.Store(s)
	return nil
}

// watchFiles reloads crl.pem, issuing-crl.pem and the schema file when
// they change; after a CRL reload it drops the sessions of devices revoked
// since they connected. Every minute it re-signs the issuing CA's list when
// it is getting old. It also logs the audit log's failures and recoveries.
func (g *Gateway) watchFiles() {
	crl, issCRL := filepath.Join(g.cfg.PKI, pki.FileCRL), filepath.Join(g.cfg.PKI, pki.FileIssuingCRL)
	lastCRL, lastIssCRL, lastSchemas, lastSweep := g.files.crlStamp, g.files.issCRLStamp, g.files.schemaStamp, time.Time{}
	auditFailing := false
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-t.C:
		}
		auditFailing = g.watchAudit(auditFailing)
		if time.Since(lastSweep) > time.Minute {
			lastSweep = time.Now()
			g.hook.DropRevoked() // certificates that expired while connected
			g.refreshIssuingCRL()
		}
		lastCRL = g.reloadCRL(crl, lastCRL, g.rev)
		lastIssCRL = g.reloadCRL(issCRL, lastIssCRL, g.files.issRev)
		if g.cfg.Schemas == "" {
			continue
		}
		if s := stamp(g.cfg.Schemas); s != lastSchemas {
			lastSchemas = s
			if err := g.reloadSchemas(); err != nil {
				g.log.Error("reload schemas (keeping the previous ones)", "error", err)
			} else {
				g.log.Info("schemas reloaded", "file", g.cfg.Schemas)
			}
		}
	}
}

// reloadCRL reloads rev from path when its stamp differs from last, and
// then drops the sessions it revokes; it returns the stamp seen.
func (g *Gateway) reloadCRL(path, last string, rev *pki.Revocations) string {
	s := stamp(path)
	if s == last {
		return last
	}
	if err := rev.Reload(); err != nil {
		g.log.Error("reload revocation list", "file", path, "error", err)
	} else {
		g.log.Info("revocation list reloaded", "file", path)
		g.hook.DropRevoked()
	}
	return s
}

// stamp identifies the version of the file at path by its modification
// time and size; "" when there is none.
func stamp(path string) string {
	if path == "" {
		return ""
	}
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	return fmt.Sprint(fi.ModTime().UnixNano(), fi.Size())
}

// watchAudit logs when the audit log starts failing and when it writes
// again; failing is the state of the previous call.
func (g *Gateway) watchAudit(failing bool) bool {
	err := g.audit.Err()
	switch {
	case err != nil && !failing:
		g.log.Error("audit log cannot be written: security events are not being recorded (retrying every second)", "error", err)
	case err == nil && failing:
		g.log.Warn("audit log written again; the events lost meanwhile are recorded in it as a gap", "lost_total", g.audit.Lost())
	}
	return err != nil
}

// auditLoop runs the posture audit every audit.interval, the first time
// one interval after the start (devices have connected by then).
func (g *Gateway) auditLoop() {
	t := time.NewTicker(g.cfg.Audit.Interval)
	defer t.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-t.C:
		}
		if rep := g.auditor.Run(); len(rep.Findings) > 0 {
			g.log.Info("posture audit", "findings", len(rep.Findings), "high_or_critical", rep.Serious())
		}
	}
}
