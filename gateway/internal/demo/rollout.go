package demo

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	mqtt3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/vitalgate/vitalgate/internal/fleet"
	"github.com/vitalgate/vitalgate/internal/jobmsg"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/updrepo"
)

// The demo's firmware rollout: at start, a signed test image of the
// oximeters' model in an update repository under the demo directory,
// served over HTTPS as any static host would; once the fleet runs, an
// operator at the cloud starts a rollout of it in three waves.
const (
	RolloutJob    = "demo-oxi-fw"
	RolloutPrefix = "oxi" // the site's other oximeters, not drawn as patients
	imageSize     = 64 << 10
)

// RolloutModel is the model the demo's rollout updates: the oximeters'.
var RolloutModel = fleet.ModelOf("spo2")

// RolloutWaves are the demo rollout's waves, cumulative percentages.
var RolloutWaves = []int{10, 50, 100}

// prepareUpdates creates the update keys and repository in the demo's PKI
// and directory (unless a reused directory has them) and publishes a test
// image of RolloutModel, signed: version 1.1.0 in a new repository, a
// version and seq of the current time in a reused one (a device installs
// only a seq above its own). It returns the version.
func prepareUpdates(res *Result) (string, error) {
	version, seq := "1.1.0", uint64(1)
	if err := updrepo.Setup(res.PKI, res.Repo, pki.P256, time.Now()); err != nil {
		if _, serr := os.Stat(filepath.Join(res.PKI, pki.FileTUFRoot)); serr != nil {
			return "", fmt.Errorf("update repository: %w", err)
		}
		seq = uint64(time.Now().Unix())
		version = fmt.Sprintf("1.1.%d", seq)
	}
	if err := updrepo.PublishTestImage(res.PKI, res.Repo, RolloutModel, version, seq, imageSize, time.Now()); err != nil {
		return "", fmt.Errorf("the test image: %w", err)
	}
	return version, nil
}

// startRollout waits until after, then publishes the demo's rollout of
// version as an operator at the cloud's apps listener: every oximeter of
// the site, in RolloutWaves, aborted when a fifth of the devices tried fail.
func startRollout(ctx context.Context, res *Result, site, version string, after time.Duration, log *slog.Logger) error {
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(after):
	}
	tok, err := operatorToken(res.PKI, site)
	if err != nil {
		return fmt.Errorf("operator token: %w", err)
	}
	tc, err := pki.ClientTLS(filepath.Join(res.PKI, pki.FileCA), "", "")
	if err != nil {
		return fmt.Errorf("operator TLS: %w", err)
	}
	tc.ServerName = "localhost"
	o := mqtt3.NewClientOptions().AddBroker("ssl://" + res.AppsAddr).SetClientID("demo-operator").
		SetUsername("demo-operator").SetPassword(tok).SetTLSConfig(tc).SetCleanSession(true).
		SetAutoReconnect(false).SetConnectRetry(false)
	c := mqtt3.NewClient(o)
	if t := c.Connect(); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		return fmt.Errorf("operator: connect to %s: %v", res.AppsAddr, t.Error())
	}
	defer c.Disconnect(250)
	job := &jobmsg.Job{V: 1, ID: RolloutJob, Model: RolloutModel, Version: version, Waves: RolloutWaves,
		AbortFailures: 0.2, Deadline: time.Now().Add(time.Hour).UnixMilli()}
	if err := jobmsg.Publish(c, site, job); err != nil {
		return fmt.Errorf("operator: %w", err)
	}
	log.Info("rollout published", "job", RolloutJob, "model", RolloutModel, "version", version)
	return nil
}

// operatorToken mints the demo operator's app token for site.
func operatorToken(pkiDir, site string) (string, error) {
	return pki.MintRoleToken(pkiDir, "demo-operator", pki.RoleOperator, []string{site}, 24*time.Hour)
}

// runOximeters runs the site's other oximeters (n of them, prefix
// RolloutPrefix) at a low rate until ctx is done: most of the rollout's
// devices.
func runOximeters(ctx context.Context, res *Result, n int, log *slog.Logger) {
	fc := fleet.Default()
	fc.PKI, fc.Gateway, fc.HTTPS, fc.Devices, fc.Prefix = res.PKI, res.DeviceAddr, res.HTTPSAddr, n, RolloutPrefix
	fc.Kinds, fc.Rate, fc.MQTT = []string{"spo2"}, 0.2, fleet.MQTTMix
	fc.Logger = log.With("component", "oximeters")
	if _, err := fleet.Run(ctx, fc, nil); err != nil && ctx.Err() == nil {
		log.Error("oximeters", "error", err)
	}
}
