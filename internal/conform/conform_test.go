package conform_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/conform"
	"github.com/vitalgate/vitalgate/internal/fleet"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// judge runs the conformance check against one simulated device of cfg.
func judge(t *testing.T, dir string, mod func(*fleet.Config)) *conform.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ready := make(chan string, 1)
	type out struct {
		rep *conform.Report
		err error
	}
	done := make(chan out, 1)
	go func() {
		rep, err := conform.Run(ctx, conform.Options{PKI: dir, Listen: "127.0.0.1:0", Messages: 6, DisconnectAfter: 3,
			Duration: 40 * time.Second, Ready: func(a string) { ready <- a }})
		done <- out{rep, err}
	}()
	var addr string
	select {
	case addr = <-ready:
	case o := <-done:
		t.Fatalf("conform: %v", o.err)
	}
	cfg := fleet.Default()
	cfg.PKI, cfg.Gateway, cfg.Devices, cfg.Rate, cfg.Duration, cfg.Updates = dir, addr, 1, 10, 45*time.Second, false
	cfg.Prefix, cfg.Kinds, cfg.State = "maker", []string{"bp"}, "-"
	if mod != nil {
		mod(&cfg)
	}
	fctx, stop := context.WithCancel(ctx)
	fdone := make(chan struct{})
	go func() { defer close(fdone); fleet.Run(fctx, cfg, nil) }()
	o := <-done
	stop()
	<-fdone
	if o.err != nil {
		t.Fatalf("conform: %v", o.err)
	}
	var b bytes.Buffer
	o.rep.WriteText(&b)
	t.Log("\n" + b.String())
	return o.rep
}

func newPKI(t *testing.T) string {
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestCorrectDevice: the simulator's own devices pass every rule, with
// MQTT 5 (the reason-code rules too) and 3.1.1 (those not tested).
func TestCorrectDevice(t *testing.T) {
	dir := newPKI(t)
	rep := judge(t, dir, nil)
	if !rep.Passed() || rep.MQTT != 5 || rep.Device != "maker-00001" {
		t.Fatalf("MQTT 5 device: %+v", rep)
	}
	for _, r := range rep.Results {
		if r.Status != conform.Pass {
			t.Errorf("%s: %s %s", r.Rule, r.Status, r.Evidence)
		}
	}
	rep = judge(t, dir, func(c *fleet.Config) { c.MQTT = fleet.MQTT3 })
	if !rep.Passed() || rep.MQTT != 4 {
		t.Fatalf("MQTT 3.1.1 device: %+v", rep)
	}
	for _, r := range []string{conform.RuleQuota, conform.RuleDropReject} {
		if got := rep.Result(r); got.Status != conform.NotTested || !strings.Contains(got.Evidence, "no reason codes") {
			t.Errorf("3.1.1 %s: %+v", r, got)
		}
	}
	for _, r := range []string{conform.RuleResend, conform.RuleReconnect, conform.RuleSeq, conform.RuleCOSE} {
		if rep.Result(r).Status != conform.Pass {
			t.Errorf("3.1.1 %s: %+v", r, rep.Result(r))
		}
	}
	var j bytes.Buffer
	if err := rep.WriteJUnit(&j); err != nil || !strings.Contains(j.String(), `skipped="2"`) || !strings.Contains(j.String(), `failures="0"`) {
		t.Errorf("junit: %v\n%s", err, j.String())
	}
}

// TestBrokenDevices: each kind of broken device fails the rule it breaks.
func TestBrokenDevices(t *testing.T) {
	dir := newPKI(t)
	for _, c := range []struct{ attack, rule, evidence string }{
		{fleet.AttackBadSignature, conform.RuleCOSE, "signature"},
		{fleet.AttackIdentityMismatch, conform.RuleIdentity, "record dev"},
		{fleet.AttackReplay, conform.RuleSeq, "after seq"},
		{fleet.AttackFuture, conform.RuleTime, "ahead"},
		{fleet.AttackACLDenied, conform.RuleTopic, "PUBLISH on"},
		{fleet.AttackSchema, conform.RuleRecord, ""},
	} {
		t.Run(c.attack, func(t *testing.T) {
			rep := judge(t, dir, func(f *fleet.Config) { f.Attack, f.AttackBudget = c.attack, 3 })
			got := rep.Result(c.rule)
			if rep.Passed() || got.Status != conform.Fail || !strings.Contains(got.Evidence, c.evidence) {
				t.Fatalf("%s: %+v", c.rule, got)
			}
		})
	}
}

func TestNoDevice(t *testing.T) {
	dir := newPKI(t)
	rep, err := conform.Run(context.Background(), conform.Options{PKI: dir, Listen: "127.0.0.1:0", Duration: 200 * time.Millisecond})
	if !errors.Is(err, conform.ErrNoDevice) || rep == nil || rep.Passed() != true {
		t.Fatalf("%v %+v", err, rep)
	}
	if _, err := conform.Run(context.Background(), conform.Options{PKI: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "device CAs") {
		t.Fatalf("missing PKI: %v", err)
	}
}
