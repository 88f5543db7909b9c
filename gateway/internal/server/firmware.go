package server

import (
	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/gateway/internal/est"
	"github.com/vitalgate/vitalgate/gateway/internal/firmware"
)

// newFirmware opens the firmware store (the update repository's TUF client and the image cache in
// DATA/firmware) when updates.url is set.
func (g *Gateway) newFirmware() error {
	if g.cfg.Updates.URL == "" {
		return nil
	}
	s, err := firmware.New(firmware.Options{URL: g.cfg.Updates.URL, PKI: g.cfg.PKI, Data: g.cfg.Data,
		CacheBytes: g.cfg.Updates.CacheBytes, Refresh: g.cfg.Updates.Refresh,
		Log: g.log.With("component", "firmware"), Metrics: g.reg})
	if err != nil {
		return err
	}
	g.firmware = s
	return nil
}

// firmwareRoute is GET /firmware/{sha256-hex} on the https listener: devices authenticated like EST's
// simplereenroll (est.Server.Device), each request asked of allowFirmware.
func (g *Gateway) firmwareRoute(s *est.Server) *firmware.Route {
	return &firmware.Route{Store: g.firmware, Device: s.Device, GatewayID: g.id,
		Allowed: func(dev, sha string) bool { return g.allowFirmware != nil && g.allowFirmware(dev, sha) },
		Event:   func(e audit.Event) { g.event(e, false) }}
}

// Firmware is the firmware store, nil when updates.url is empty.
func (g *Gateway) Firmware() *firmware.Store { return g.firmware }
