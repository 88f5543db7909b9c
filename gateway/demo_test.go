package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/gateway/internal/demo"
	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"

	"github.com/vitalgate/vitalgate/internal/testutil"
)

// syncBuffer is an output the demo writes to while the test reads it.
type syncBuffer = testutil.SyncBuffer

// lastFrame is the last plain snapshot the demo appended.
func lastFrame(out string) string {
	if i := strings.LastIndex(out, "\n--- "); i >= 0 {
		return out[i+1:]
	}
	return out
}

// okRow matches a patient's row with vitals and a verified signature:
// DEVICE KIND VITALS SEQ AGE SIG BAT.
var okRow = regexp.MustCompile(`(?m)^patient-\d{5}\s+(spo2|bp|glucose|temp|weight|ecg)\s+(SpO2|BP|glucose|temp|weight|ECG)\b.*\s\d+\s+[\d.]+s\s+ok\s+\d+%$`)

// rejections parses "rejected by the gateway (security events): v n v n".
func rejections(frame string) map[string]int {
	m := map[string]int{}
	for _, l := range strings.Split(frame, "\n") {
		rest, ok := strings.CutPrefix(l, "rejected by the gateway (security events):")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		for i := 0; i+1 < len(f); i += 2 {
			if n, err := strconv.Atoi(f[i+1]); err == nil {
				m[f[i]] = n
			}
		}
	}
	return m
}

// The verdicts of the attackers' first phases (demo.AttackCycles[k][0]).
var firstPhase = []string{"bad_signature", "identity_mismatch", "schema"}

// rolloutDone matches the finished rollout of every oximeter (patients' and
// the site's other 20), each wave final.
var rolloutDone = regexp.MustCompile(`(?m)^rollout demo-oxi-fw: acme-oxi-1 to 1\.1\.0, \d+ devices, done: succeeded \d+$`)

func demoDone(frame string) bool {
	if !okRow.MatchString(frame) || !rolloutDone.MatchString(frame) {
		return false
	}
	r := rejections(frame)
	for _, v := range firstPhase {
		if r[v] == 0 {
			return false
		}
	}
	return true
}

// TestDemo runs `gateway demo` in process with its output in a buffer until
// the clinician view shows verified telemetry and the attackers' rejections
// (or the demo's own --duration, the deadline, passes), then stops it as
// Ctrl-C would and checks the final view and summary.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole system")
	}
	dir := t.TempDir()
	out := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- runDemo(ctx, []string{"--devices", "6", "--attackers", "3", "--duration", "90s", "--dir", dir}, out, false)
	}()

	var err error
	finished := false
	for !finished {
		select {
		case err = <-done:
			finished = true
			continue
		case <-time.After(100 * time.Millisecond):
		}
		if demoDone(lastFrame(out.String())) {
			cancel() // Ctrl-C
			err = <-done
			finished = true
		}
	}
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	text := out.String()
	// The final frame, drawn after the fleet stopped, precedes the summary.
	final := lastFrame(text)
	if !okRow.MatchString(final) {
		t.Errorf("no patient row with vitals and a verified signature in the final view:\n%s", final)
	}
	// The clinician trusts ca.crt alone: the rows verified with the chains the gateway published.
	if m := regexp.MustCompile(`device certificates \(published, checked against ca.crt\): (\d+) verified, 0 rejected`).FindStringSubmatch(final); m == nil || m[1] == "0" {
		t.Errorf("no verified published certificate chain in the final view:\n%s", final)
	}
	if !rolloutDone.MatchString(final) {
		t.Errorf("no finished rollout in the final view:\n%s", final)
	}
	for i, w := range []string{"10", "50", "100"} {
		if !regexp.MustCompile(fmt.Sprintf(`(?m)^  wave %d +%s%%  \[#{20}\] (\d+)/(\d+) final$`, i+1, w)).MatchString(final) {
			t.Errorf("wave %d not shown final in the final view:\n%s", i+1, final)
		}
	}
	r := rejections(final)
	for _, v := range firstPhase {
		if r[v] == 0 {
			t.Errorf("no %s rejections counted in the final view (%v)", v, r)
		}
	}
	for _, line := range strings.Split(final, "\n") {
		if strings.HasPrefix(line, demo.AttackerPrefix+"-") {
			t.Errorf("an attacker shown as a patient row: %q", line)
		}
	}
	if strings.Contains(final, "SIG BAD") || strings.Contains(final, "REC DIFFERS") {
		t.Errorf("a message failed its end-to-end check:\n%s", final)
	}
	if strings.Contains(final, "fleet error") {
		t.Errorf("fleet error:\n%s", final)
	}
	for _, want := range []string{"devices mTLS 127.0.0.1:", "cloud apps 127.0.0.1:", "PKI:          " + dir,
		"data:         " + dir, "chain intact", "attack phases"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "\x1b[") {
		t.Error("ANSI codes in output that is not a terminal")
	}
	if t.Failed() {
		t.Logf("output:\n%s", text)
	}
}

func TestDemoFlags(t *testing.T) {
	ctx := context.Background()
	var out bytes.Buffer
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--devices", "0"}, "--devices 0"},
		{[]string{"--attackers", "-1"}, "--attackers -1"},
		{[]string{"--duration", "soon"}, "invalid value"},
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"--devices", "5000"}, "devices: 5000 outside"},
	}
	for _, c := range cases {
		out.Reset()
		err := runDemo(ctx, c.args, &out, false)
		if err == nil || !strings.Contains(err.Error()+out.String(), c.want) {
			t.Errorf("%v: error %v, output %q; want %q", c.args, err, out.String(), c.want)
		}
	}
	out.Reset()
	if err := runDemo(ctx, []string{"--help"}, &out, false); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "-duration duration") {
		t.Errorf("--help: %v %q", err, out.String())
	}
}

// TestDemoSign checks `gateway demo sign`: a record of the kind asked, with
// the seq asked, signed with the device's key (what the README publishes
// with mosquitto_pub).
func TestDemoSign(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := pki.IssueDevice(dir, "oxi-0001", pki.P256, 30); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"spo2", "bp", "glucose", "temp", "weight", "ecg"} {
		var out, errOut bytes.Buffer
		if err := signCmd([]string{"--pki", dir, "--id", "oxi-0001", "--kind", kind, "--seq", "7"}, &out, &errOut); err != nil {
			t.Fatalf("%s: %v %s", kind, err, errOut.String())
		}
		crt, _ := pki.DevicePaths(dir, "oxi-0001")
		cert, err := pki.LoadCert(crt)
		if err != nil {
			t.Fatal(err)
		}
		payload, err := envelope.VerifyCert(cert, out.Bytes())
		if err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		rec, err := telemetry.Decode(payload)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Dev != "oxi-0001" || rec.Seq != 7 || rec.Kind != kind {
			t.Errorf("record %+v", rec)
		}
		if err := telemetry.CheckTime(rec.TS, time.Now(), 0); err != nil {
			t.Error(err)
		}
	}
	// An enrolled device's key lives with the device, not in the PKI directory.
	crt, keyFile := pki.DevicePaths(dir, "oxi-0001")
	own := filepath.Join(t.TempDir(), "oxi.key")
	if err := os.Rename(keyFile, own); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if err := signCmd([]string{"--key", own, "--id", "oxi-0001", "--seq", "8"}, &out, &errOut); err != nil {
		t.Fatalf("--key: %v %s", err, errOut.String())
	}
	if cert, err := pki.LoadCert(crt); err != nil {
		t.Fatal(err)
	} else if _, err := envelope.VerifyCert(cert, out.Bytes()); err != nil {
		t.Errorf("--key: %v", err)
	}
	for _, args := range [][]string{
		{"--key", filepath.Join(dir, "missing.key"), "--id", "oxi-0001", "--seq", "9"},
		{"--pki", dir, "--id", "oxi-0001", "--seq", "0"},
		{"--pki", dir, "--id", "nobody", "--seq", "1"},
		{"--pki", dir, "--id", "bad id", "--seq", "1"},
		{"--pki", dir, "--id", "oxi-0001", "--kind", "mood", "--seq", "1"},
	} {
		var out, errOut bytes.Buffer
		if err := signCmd(args, &out, &errOut); err == nil || out.Len() > 0 {
			t.Errorf("%v: err %v, %d bytes written", args, err, out.Len())
		}
	}
}
