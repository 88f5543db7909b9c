package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAnomaliesFlags(t *testing.T) {
	if code, o, e := runCLI("anomalies", "--help"); code != 0 || strings.Count(o, "usage: devicesim anomalies") != 1 || e != "" {
		t.Errorf("anomalies --help: %d stdout %q stderr %q", code, o, e)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--duration", "3m"}, "the attacks begin after 4m0s"}, // 2m warm-up + 2 windows of 1m
		{[]string{"--window", "10ms"}, "--window under 1s"},
		{[]string{"--devices", "0"}, "--devices outside"},
		{[]string{"extra"}, `unexpected argument "extra"`},
	} {
		code, _, e := runCLI(append([]string{"anomalies"}, c.args...)...)
		if code != 2 || !strings.HasPrefix(e, "devicesim anomalies: ") || !strings.Contains(e, c.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", c.args, code, e, c.want)
		}
	}
}

// The counts come from the audit log's anomaly events only, grouped by
// the device ID's prefix; the verdict fails on a normal device reported or
// an attacker missed.
func TestAnomaliesReport(t *testing.T) {
	line := func(verdict, dev, metric string) string {
		return `{"n":1,"prev":"00","hash":"00","event":{"v":1,"ts":1,"gw":"gw1","dev":"` + dev + `","verdict":"` + verdict +
			`","detail":"x","remote":"","metric":"` + metric + `","figure":1200,"baseline":60,"threshold":180}}` + "\n"
	}
	path := filepath.Join(t.TempDir(), "audit.log")
	write := func(lines ...string) {
		if err := os.WriteFile(path, []byte(strings.Join(lines, "")), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c := anomaliesConfig{attackers: 2, duration: time.Minute}
	good := []string{line("anomaly", "burst-00001", "messages_per_minute"), line("anomaly", "burst-00002", "messages_per_minute"),
		line("anomaly", "flap-00001", "reconnects_per_hour"), line("anomaly", "flap-00002", "reconnects_per_hour"),
		line("anomaly", "flap-00002", "reconnects_per_hour"), line("bad_signature", "dev-00001", "")}
	for _, tc := range []struct {
		lines  []string
		status int
		want   string
	}{
		{good, 0, "flap  anomaly events: 3 [reconnects_per_hour 3 from 2 devices]"},
		{good, 0, "\n  burst-00002 messages_per_minute: figure 1200, threshold 180, baseline 60\n"},
		{append(good, line("anomaly", "dev-00007", "messages_per_minute")), 1, "dev   anomaly events: 1 [messages_per_minute 1 from 1 devices] (want none): FAIL"},
		{good[1:], 1, "burst anomaly events: 1 [messages_per_minute 1 from 1 devices] (want messages_per_minute from each of 2): FAIL"},
	} {
		write(tc.lines...)
		n, err := readAnomalies(path)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if got := n.report(&out, c); got != tc.status || !strings.Contains(out.String(), tc.want) {
			t.Errorf("status %d, report:\n%s\nwant %d and %q", got, out.String(), tc.status, tc.want)
		}
	}
	if _, err := readAnomalies(filepath.Join(t.TempDir(), "none.log")); err == nil || !strings.Contains(err.Error(), "read audit log") {
		t.Errorf("missing log: %v", err)
	}
}
