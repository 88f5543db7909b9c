package sim

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
)

const good = `name: t
phases:
  - name: one
    duration: 2s
    fleets:
      - {name: a, devices: 2, kinds: [spo2], mqtt: mix}
    expect:
      acked: ">= 3"
      rejected: {bad_signature: 0}
`

func TestParseGood(t *testing.T) {
	sc, err := Parse("t.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	ph := sc.Phases[0]
	if sc.Name != "t" || ph.Name != "one" || ph.Duration != 2*time.Second || ph.Settle != 10*time.Second ||
		len(ph.Fleets) != 1 || ph.Fleets[0].Prefix != "a" || ph.Fleets[0].Devices != 2 || len(ph.Expect) != 2 {
		t.Fatalf("%+v", sc)
	}
	if e := ph.Expect[1]; e.Metric != "rejected.bad_signature" || e.Line != 9 {
		t.Errorf("second expectation %+v", e)
	}
	// Every example of the repository parses.
	files, _ := filepath.Glob("../scenarios/*.yaml")
	if len(files) < 4 {
		t.Fatalf("examples: %v", files)
	}
	for _, f := range files {
		if _, err := Load(f); err != nil {
			t.Error(err)
		}
	}
}

// TestParseErrors: each bad input is one error naming the file, the line
// and what is wrong.
func TestParseErrors(t *testing.T) {
	for _, c := range []struct{ name, yaml, want string }{
		{"unknown key", "name: x\nphasess: []\n", `f.yaml:2: scenario: unknown key "phasess" (valid keys: cloud, est, gateway, https, name, phases, pki, repo, seed)`},
		{"no phases", "name: x\n", "f.yaml:1: scenario: no phases"},
		{"no fleet", "phases:\n  - name: p\n    duration: 1s\n", `f.yaml:2: phase "p": no fleets`},
		{"unknown fleet key", "phases:\n  - duration: 1s\n    fleets:\n      - {name: a, devices: 1, colour: red}\n",
			`f.yaml:4: phase "phase 1" fleet 1: unknown key "colour"`},
		{"bad verdict", "phases:\n  - duration: 1s\n    fleets: [{name: a}]\n    expect:\n      rejected: {bad_sig: 1}\n",
			`f.yaml:5: expect: "bad_sig" is not a verdict`},
		{"bad event", "cloud: {url: ssl://127.0.0.1:1, site: s, token_file: t}\nphases:\n  - duration: 1s\n    fleets: [{name: a}]\n    expect:\n      events: {anomaly: 0, bad_sig: 1}\n",
			`f.yaml:6: expect: "bad_sig" is not an event name (events: the verdicts but accepted, handshake_failed, audit`},
		{"accepted is no event", "cloud: {url: ssl://127.0.0.1:1, site: s, token_file: t}\nphases:\n  - duration: 1s\n    fleets: [{name: a}]\n    expect:\n      events: {accepted: 1}\n",
			`f.yaml:6: expect: "accepted" is not an event name`},
		{"bad metric", "phases:\n  - duration: 1s\n    fleets: [{name: a}]\n    expect:\n      ackd: 1\n",
			`f.yaml:5: expect: unknown metric "ackd"`},
		{"bad comparison", "phases:\n  - duration: 1s\n    fleets: [{name: a}]\n    expect:\n      acked: \"about 3\"\n",
			`f.yaml:5: expect: acked: "about 3": want a count`},
		{"bad range", "phases:\n  - duration: 1s\n    fleets: [{name: a}]\n    expect:\n      acked: \"9..3\"\n",
			`f.yaml:5: expect: acked: "9..3" is not a range`},
		{"cloud metric without cloud", "phases:\n  - duration: 1s\n    fleets: [{name: a}]\n    expect:\n      lost: 0\n",
			`f.yaml:5: expect: lost needs a cloud section`},
		{"bad duration", "phases:\n  - duration: soon\n    fleets: [{name: a}]\n", `f.yaml:2: phase 1.duration: "soon" is not a duration`},
		{"no duration", "phases:\n  - fleets: [{name: a}]\n", `f.yaml:2: phase "phase 1": duration 0s outside`},
		{"bad kind", "phases:\n  - duration: 1s\n    fleets: [{name: a, kinds: [toaster]}]\n", `fleet "a": unknown kind "toaster"`},
		{"bad attack", "phases:\n  - duration: 1s\n    fleets: [{name: a, attack: nope}]\n", `fleet "a": attack: "nope": want one of`},
		{"bad mqtt", "phases:\n  - duration: 1s\n    fleets: [{name: a, mqtt: 4}]\n", `fleet "a": mqtt "4": want 3, 5 or mix`},
		{"two prefixes", "phases:\n  - duration: 1s\n    fleets: [{name: a}, {name: b, prefix: a}]\n", `two fleets with the device prefix "a"`},
		{"action", "phases:\n  - duration: 1s\n    do: [{hook: x, exec: [y]}]\n    fleets: [{name: a}]\n", "f.yaml:3: do: want exactly one of hook, exec or rollout"},
		{"yaml syntax", "phases: [\n", "f.yaml:1: did not find expected node content"},
		{"not yaml", "", "f.yaml: empty scenario"},
	} {
		_, err := Parse("f.yaml", []byte(c.yaml))
		var fe *FileError
		if err == nil || !errors.As(err, &fe) || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	if _, err := Load(filepath.Join(t.TempDir(), "none.yaml")); err == nil || !strings.Contains(err.Error(), "none.yaml: no such file") {
		t.Errorf("missing file: %v", err)
	}
}

func TestExpectation(t *testing.T) {
	for _, c := range []struct {
		want string
		got  float64
		ok   bool
	}{
		{"3", 3, true}, {"3", 4, false}, {">= 3", 3, true}, {">3", 3, false}, {"< 2.5", 2, true}, {"<= 2", 3, false},
		{"!= 0", 0, false}, {"== 7", 7, true}, {"5..20", 5, true}, {"5..20", 21, false}, {"0..0", 0, true},
	} {
		e := Expectation{Metric: "acked", Want: c.want}
		if err := e.parse(); err != nil {
			t.Fatalf("%q: %v", c.want, err)
		}
		if e.Holds(c.got) != c.ok {
			t.Errorf("%s with %v: %v", e, c.got, !c.ok)
		}
	}
}

// TestMissingHook: a scenario naming a hook its caller does not provide
// stops before anything runs.
func TestMissingHook(t *testing.T) {
	sc, err := Parse("h.yaml", []byte("phases:\n  - duration: 1s\n    do: [{hook: cloud_down}]\n    fleets: [{name: a}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Run(context.Background(), sc, Options{Gateway: "127.0.0.1:1"})
	if err == nil || !strings.Contains(err.Error(), `h.yaml:3: hook "cloud_down" is not provided`) {
		t.Fatalf("%v", err)
	}
}

// TestUnreachable: no gateway is an ErrUnreachable, not a failed expectation.
// TestUnreachable: missing certificates and an unreachable gateway stop the
// run with an error that names the file and the fleet's line.
func TestUnreachable(t *testing.T) {
	sc, err := Parse("u.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	const where = `u.yaml:6: phase "one": fleet "a": `
	// No PKI: the devices' certificates are missing and cannot be issued.
	_, err = Run(context.Background(), sc, Options{Gateway: "127.0.0.1:1", PKI: t.TempDir()})
	if !errors.Is(err, ErrCertificates) || !strings.HasPrefix(err.Error(), where) {
		t.Fatalf("no PKI: %v", err)
	}
	// A PKI, and no gateway at the address.
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = Run(context.Background(), sc, Options{Gateway: "127.0.0.1:1", PKI: dir})
	if !errors.Is(err, ErrUnreachable) || !strings.HasPrefix(err.Error(), where) {
		t.Fatalf("no gateway: %v", err)
	}
}

func TestJUnit(t *testing.T) {
	sc, _ := Parse("j.yaml", []byte(good))
	t0 := time.Unix(1767225600, 0)
	res := &Result{Scenario: sc.Name, File: "j.yaml", Start: t0, End: t0.Add(3 * time.Second), Phases: []PhaseResult{{
		Name: "one", Start: t0, End: t0.Add(2 * time.Second),
		Checks: []Check{{Expectation: sc.Phases[0].Expect[0], Phase: "one", Got: 2}, {Expectation: sc.Phases[0].Expect[1], Phase: "one", Got: 0, OK: true}},
	}}}
	var b bytes.Buffer
	if err := res.WriteJUnit(&b, nil); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
		Suites   []struct {
			Name  string `xml:"name,attr"`
			Cases []struct {
				Name    string `xml:"name,attr"`
				Failure *struct {
					Text string `xml:",chardata"`
				} `xml:"failure"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b.Bytes(), &doc); err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	s := doc.Suites[0]
	if doc.Tests != 2 || doc.Failures != 1 || s.Name != "t" || len(s.Cases) != 2 || s.Cases[0].Failure == nil ||
		s.Cases[0].Name != "one: acked >= 3" || !strings.Contains(s.Cases[0].Failure.Text, `j.yaml:8: phase "one": acked >= 3: failed, got 2`) ||
		s.Cases[1].Failure != nil {
		t.Fatalf("%s", b.String())
	}
	if os.Getenv("VG_SHOW") != "" {
		t.Log(b.String())
	}

	// A run stopped in its second phase: the first phase's cases as
	// before, the stopped phase one error case, nothing passing for it.
	res.Phases = append(res.Phases, PhaseResult{Name: "two", Start: t0.Add(2 * time.Second), End: t0.Add(3 * time.Second)})
	b.Reset()
	if err := res.WriteJUnit(&b, errors.New(`j.yaml:12: phase "two": gateway 127.0.0.1:1 unreachable`)); err != nil {
		t.Fatal(err)
	}
	var stopped struct {
		Tests  int `xml:"tests,attr"`
		Errors int `xml:"errors,attr"`
		Suites []struct {
			Cases []struct {
				Name  string `xml:"name,attr"`
				Error *struct {
					Message string `xml:"message,attr"`
				} `xml:"error"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b.Bytes(), &stopped); err != nil {
		t.Fatal(err)
	}
	cs := stopped.Suites[0].Cases
	if stopped.Tests != 3 || stopped.Errors != 1 || len(cs) != 3 || cs[2].Name != "two: runs" || cs[2].Error == nil ||
		!strings.Contains(cs[2].Error.Message, "unreachable") || cs[0].Error != nil || cs[1].Error != nil {
		t.Fatalf("stopped run:\n%s", b.String())
	}
	// Stopped before its first phase: one error case "run".
	b.Reset()
	empty := &Result{Scenario: "t", Start: t0, End: t0}
	if err := empty.WriteJUnit(&b, errors.New("hook x: not provided")); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `name="run"`) || !strings.Contains(b.String(), `errors="1"`) {
		t.Fatalf("stopped before the first phase:\n%s", b.String())
	}
}
