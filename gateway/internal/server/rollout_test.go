//go:build rolloutdraft

package server

// Draft against the contracts: the names marked API? change once the
// parts land.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/fleet"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

const (
	rolloutModel   = "acme-oxi-1" // API? the model of the fleet's spo2 devices
	rolloutVersion = "1.1.0"
)

// rolloutEnv is a PKI with an update repository holding one signed image,
// a standalone cloud broker serving the repository, a gateway fetching
// from it, a clinician app and an operator at the cloud.
type rolloutEnv struct {
	*env
	cloudApps string
	app       *app
	op        *jobWatch
}

func newRolloutEnv(t *testing.T) *rolloutEnv {
	e := &env{t: t, pki: newPKI(t)}
	repo := t.TempDir()
	// API? update-init and firmware
	_ = repo
	cl := startCloud(t, e.pki, t.TempDir(), "127.0.0.1:0", "127.0.0.1:0") // API? with Updates
	e.cfg = testConfig(t, e.pki)
	e.cfg.Cloud = []string{"ssl://" + cl.GatewayAddr()}
	// e.cfg.Updates.URL = "https://" + cl.UpdatesAddr() // API?
	e.start()
	r := &rolloutEnv{env: e, cloudApps: "ssl://" + cl.AppsAddr()}
	r.app = e.app(r.cloudApps)
	tok, err := pki.MintToken(e.pki, "operator", []string{"site1"}, time.Hour) // API? role operator
	if err != nil {
		t.Fatal(err)
	}
	r.op = e.watchJobs(r.cloudApps, "operator", tok)
	return r
}

// updFleet is a fleet of oximeters prefix-00001.. that take updates from
// the gateway's HTTPS listener.
func (r *rolloutEnv) updFleet(prefix string, devices int, d time.Duration) fleet.Config {
	c := fleet.Default()
	c.PKI, c.Gateway, c.Prefix, c.Devices = r.pki, r.gw.DeviceAddr(), prefix, devices
	c.Kinds = []string{"spo2"}
	c.Rate, c.QoS, c.MQTT = 0.5, 1, fleet.MQTTMix
	c.Duration, c.Drain = d, 20*time.Second
	c.State = r.t.TempDir()
	c.Progress = 5 * time.Second
	c.Logger = quietLog(r.t)
	// c.HTTPS = r.gw.HTTPSAddr() // API?
	return c
}

func TestRollout200(t *testing.T) {
	if testing.Short() {
		t.Skip("a 200-device rollout")
	}
	const devices = 200
	r := newRolloutEnv(t)
	cfg := r.updFleet("ro", devices, 45*time.Second)
	type outcome struct {
		rep fleet.Report
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		rep, err := fleet.Run(context.Background(), cfg, func(s fleet.Stats) { t.Logf("%s", s) })
		done <- outcome{rep, err}
	}()
	var ids []string
	for i := 1; i <= devices; i++ {
		ids = append(ids, fmt.Sprintf("ro-%05d", i))
	}
	_ = ids
	_ = testutil.Poll
}
