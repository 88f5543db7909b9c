// Package sim runs simulated home-care devices against a VitalGate gateway
// from another program's tests, and runs scenario files: named phases of
// fleets, attacks and faults with the outcomes they must have.
//
// # Scenarios
//
// A scenario ([Scenario], read by [Load] or [Parse]) is a YAML file:
//
//	name: outage
//	gateway: 127.0.0.1:8883        # the gateway's device listener
//	pki: pki                        # the PKI directory (device certificates)
//	seed: 7                         # physiology and timing; --seed overrides
//	cloud:                          # optional: where delivery and events are checked
//	  url: ssl://127.0.0.1:8884     # the cloud broker's app listener
//	  site: site1
//	  token_file: operator.token    # an operator app token (security events need it)
//	phases:
//	  - name: cloud away
//	    do: [{exec: [systemctl, stop, vitalgate-broker]}]
//	    duration: 30s
//	    fleets:
//	      - {name: home, devices: 10, kinds: [spo2, bp], rate: 1}
//	    expect:
//	      acked: ">= 250"
//	      rejected: {overloaded: 0}
//
// A phase's actions are hooks its caller provides ([Options].Hooks),
// commands, or a firmware [Rollout]: a signed test image published to the
// update repository (repo:) and a job started at the cloud as an operator
// would, with expectations on the job's outcome (rollout.succeeded,
// rollout.failed, rollout.done, updated: see [RolloutMetrics]).
//
// Each phase runs its actions (do), then its fleets side by side for its
// duration, then waits up to settle for the cloud to deliver what the
// gateway acknowledged, then checks its expectations ([Expectation]): a
// count, a comparison (">= 10", "< 500", "== 0") or a range ("5..20").
// Unknown keys, a phase without fleets, an expectation on a verdict that
// does not exist, a bad duration: each is a [FileError] naming the file and
// line.
//
// [Run] runs a scenario and returns a [Result]: every check with what it
// wanted and what it got; [Result.WriteJUnit] writes it as JUnit XML for CI
// systems. `devicesim run FILE` is the command line over the same code: exit
// status 0 when every expectation holds, 1 when one fails, 2 on a bad file,
// an unreachable gateway or missing certificates.
//
// # Fleets from Go
//
// [RunFleet] runs one fleet ([FleetConfig]) and returns its [Report]: the
// same simulated devices, for tests that assert on their own.
package sim
