package sim_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/vitalgate/vitalgate/devicesim/sim"
)

// A scenario parsed from YAML: its phases and what each must get.
func ExampleParse() {
	sc, err := sim.Parse("smoke.yaml", []byte(`
phases:
  - name: steady
    duration: 5s
    fleets:
      - {name: home, devices: 4, kinds: [spo2, bp], rate: 2}
    expect:
      acked: ">= 30"
      rejected: {bad_signature: 0}
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, p := range sc.Phases {
		fmt.Println(p.Name, p.Duration, len(p.Fleets), "fleet")
		for _, e := range p.Expect {
			fmt.Println(" ", e)
		}
	}
	// Output:
	// steady 5s 1 fleet
	//   acked >= 30
	//   rejected.bad_signature == 0
}

// A bad file is one error with the file and line.
func ExampleParse_error() {
	_, err := sim.Parse("bad.yaml", []byte("phases:\n  - duration: 5s\n    fleets: [{name: a}]\n    expect: {rejected: {forged: 1}}\n"))
	fmt.Println(err)
	// Output:
	// bad.yaml:4: expect: "forged" is not a verdict (verdicts: acl_denied, too_large, malformed, bad_signature, identity_mismatch, replay, stale, future, schema, rate_limited, quarantined, overloaded)
}

// Ten simulated devices against a gateway for ten seconds, from another
// project's test.
func ExampleRunFleet() {
	cfg := sim.DefaultFleet()
	cfg.Gateway, cfg.PKI = "127.0.0.1:8883", "pki"
	cfg.Devices, cfg.Duration = 10, 10*time.Second
	rep, err := sim.RunFleet(context.Background(), cfg, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	fmt.Println("acknowledged", rep.Stats.Acked, "p99", rep.Stats.P99)
}

// A scenario file run with the cloud broker stopped and started by the
// caller, failures printed with their file and line.
func ExampleRun() {
	sc, err := sim.Load("devicesim/scenarios/outage.yaml")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	res, err := sim.Run(context.Background(), sc, sim.Options{Hooks: map[string]func(context.Context) error{
		"cloud_down": func(context.Context) error { return nil /* stop the cloud broker */ },
		"cloud_up":   func(context.Context) error { return nil /* start it again */ },
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	for _, c := range res.Failed() {
		fmt.Println(c.Message(sc.File))
	}
}
