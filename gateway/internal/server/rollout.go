package server

import (
	"context"

	"github.com/vitalgate/vitalgate/gateway/internal/jobs"
	"github.com/vitalgate/vitalgate/internal/telemetry"
)

// wireRollouts joins the rollout engine to the other parts of an update:
// the firmware store gives a job its image, the firmware route asks the
// engine which device may download which image, and the devices' status
// records move their states.
func (g *Gateway) wireRollouts() error {
	g.allowFirmware = g.jobs.Allowed
	g.OnStatus(func(dev string, st *telemetry.Status) {
		g.jobs.Report(dev, jobs.Report{Model: st.Model, FW: st.FW, Job: deref(st.Job), State: deref(st.State), Reason: deref(st.Reason)})
	})
	return nil
}

// storeFirmware gets a job's image from the firmware store (fetched
// through TUF and checked against its manifest once, then cached).
func (g *Gateway) storeFirmware(ctx context.Context, model, version string) (*jobs.Target, error) {
	img, err := g.firmware.Fetch(ctx, model, version)
	if err != nil {
		return nil, err
	}
	return &jobs.Target{Manifest: img.ManifestCOSE, SHA256: img.SHA256, Model: img.Manifest.Model}, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
