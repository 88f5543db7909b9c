// Package outside is another module's test that imports devicesim/sim: what
// a device maker's or integrator's test suite does. The repository's own
// tests run it against a real gateway (VITALGATE_GATEWAY, VITALGATE_PKI).
package outside

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/devicesim/sim"
)

func target(t *testing.T) (gateway, pki string) {
	gateway, pki = os.Getenv("VITALGATE_GATEWAY"), os.Getenv("VITALGATE_PKI")
	if gateway == "" || pki == "" {
		t.Skip("VITALGATE_GATEWAY and VITALGATE_PKI name the gateway under test")
	}
	return gateway, pki
}

func TestFleet(t *testing.T) {
	gateway, pki := target(t)
	cfg := sim.DefaultFleet()
	cfg.Gateway, cfg.PKI, cfg.Devices, cfg.Rate, cfg.Duration, cfg.Prefix = gateway, pki, 3, 4, 2*time.Second, "outside"
	cfg.Updates = false
	rep, err := sim.RunFleet(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Stats.Acked < 12 || rep.Stats.Errors != 0 {
		t.Fatalf("acked %d errors %d", rep.Stats.Acked, rep.Stats.Errors)
	}
}

func TestScenario(t *testing.T) {
	gateway, pki := target(t)
	sc, err := sim.Parse("inline.yaml", []byte(`
phases:
  - name: forged
    duration: 3s
    fleets:
      - {name: outside-forger, devices: 1, rate: 2, attack: bad_signature}
    expect:
      rejected: {bad_signature: ">= 1"}
`))
	if err != nil {
		t.Fatal(err)
	}
	res, err := sim.Run(context.Background(), sc, sim.Options{Gateway: gateway, PKI: pki})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range res.Failed() {
		t.Error(c.Message(sc.File))
	}
}
