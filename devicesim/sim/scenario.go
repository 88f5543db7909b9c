package sim

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/vitalgate/vitalgate/internal/fleet"
	"github.com/vitalgate/vitalgate/internal/fleet/physio"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// Scenario is a parsed scenario file (see the package documentation).
type Scenario struct {
	File    string  // the file it was read from ("" for [Parse] without a name)
	Name    string  // name: defaults to the file's base name
	Gateway string  // gateway: host:port of the gateway's device listener
	PKI     string  // pki: the PKI directory
	EST     string  // est: the gateway's EST URL, for fleets that enrol
	HTTPS   string  // https: the gateway's HTTPS listener, for firmware downloads
	Repo    string  // repo: the update repository the gateway reads, where rollouts publish
	Seed    int64   // seed
	Cloud   *Cloud  // cloud: nil when the scenario checks nothing at the cloud
	Phases  []Phase // phases, run in order
}

// Cloud is where a scenario reads what reached the cloud broker.
type Cloud struct {
	URL       string // url: ssl://host:port of the app listener
	CA        string // ca: CA file of the broker's certificate (default: the PKI's ca.crt)
	Site      string // site: the site whose topics are read
	TokenFile string // token_file: an app token with the role operator
	// Token is the token itself, for [Run] callers that hold it (not in files).
	Token string
}

// Phase is one step of a scenario.
type Phase struct {
	Name     string
	Line     int           // line of the phase in the file
	Do       []Action      // do: run first, in order
	Duration time.Duration // duration: how long the fleets measure
	Drain    time.Duration // drain: after duration, time to send backlogs and collect acks (default 5s)
	Settle   time.Duration // settle: at most this long for the cloud to deliver what was acknowledged (default 10s)
	Fleets   []Fleet
	Expect   []Expectation
}

// Action is something a phase does before its fleets start: a hook that
// the caller of [Run] provides ([Options].Hooks), a command, or a
// rollout.
type Action struct {
	Hook string   // hook: a name in Options.Hooks
	Exec []string // exec: a command and its arguments, run without a shell
	// Rollout starts a firmware rollout at the cloud (rollout: {...}).
	Rollout *Rollout
	Line    int
}

// Fleet is one group of devices in a phase. Devices are named
// {prefix}-00001 and up; the prefix defaults to the fleet's name, and a
// fleet of the same name in a later phase is the same devices (their seq
// continues).
type Fleet struct {
	Name         string
	Prefix       string
	Devices      int
	Kinds        []string
	MQTT         string // "5" (default), "3" or "mix"
	QoS          *int
	Rate         float64
	Attack       string
	Attackers    int
	AttackBudget int           // attack_budget
	AttackAfter  time.Duration // attack_after
	FlapEvery    time.Duration // flap_every: a disconnect storm with attack: flap
	ClockSkew    time.Duration // clock_skew: the devices' clocks are off by this
	Offline      time.Duration // offline: measure this long before connecting, then send the backlog
	Enroll       bool          // enroll: start from factory identities, enrol over EST
	Key          string        // key: p256 or ed25519
	Window       int           // window: QoS 1 messages in flight per device
	Line         int
}

// FileError is a problem of a scenario file, at a line.
type FileError struct {
	File string
	Line int
	Err  error
}

func (e *FileError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.File, e.Err)
}

func (e *FileError) Unwrap() error { return e.Err }

// maxFile bounds a scenario file.
const maxFile = 1 << 20

// Load reads and checks the scenario file at path.
func Load(path string) (*Scenario, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, &FileError{File: path, Err: errors.Unwrap(err)}
	}
	return Parse(path, b)
}

// Parse checks and decodes a scenario; name is the file name errors show.
func Parse(name string, b []byte) (*Scenario, error) {
	p := &parser{file: name}
	if len(b) > maxFile {
		return nil, p.errAt(0, "larger than %d bytes", maxFile)
	}
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(b)).Decode(&doc); errors.Is(err, io.EOF) {
		return nil, p.errAt(0, "empty scenario")
	} else if err != nil {
		return nil, p.yamlErr(err)
	}
	if len(doc.Content) == 0 {
		return nil, p.errAt(0, "empty scenario")
	}
	sc := &Scenario{File: name, Seed: 1}
	if err := p.scenario(doc.Content[0], sc); err != nil {
		return nil, err
	}
	if sc.Name == "" {
		sc.Name = strings.TrimSuffix(baseName(name), ".yaml")
	}
	return sc, nil
}

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

// parser decodes a scenario node by node, so every error has its line.
type parser struct {
	file     string
	rollouts bool // a rollout action so far: expectations may be on it
}

func (p *parser) errAt(line int, format string, args ...any) error {
	return &FileError{File: p.file, Line: line, Err: fmt.Errorf(format, args...)}
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func (p *parser) yamlErr(err error) error {
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		var line int
		fmt.Sscan(m[1], &line)
		return p.errAt(line, "%s", m[2])
	}
	return p.errAt(0, "%v", err)
}

// fields walks the keys of a mapping node: each key must be one of the
// handlers', and each value is given to its handler.
func (p *parser) fields(n *yaml.Node, what string, h map[string]func(*yaml.Node) error) error {
	if n.Kind != yaml.MappingNode {
		return p.errAt(n.Line, "%s: want a mapping", what)
	}
	valid := make([]string, 0, len(h))
	for k := range h {
		valid = append(valid, k)
	}
	slices.Sort(valid)
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		f, ok := h[k.Value]
		if !ok {
			return p.errAt(k.Line, "%s: unknown key %q (valid keys: %s)", what, k.Value, strings.Join(valid, ", "))
		}
		if seen[k.Value] {
			return p.errAt(k.Line, "%s: key %q twice", what, k.Value)
		}
		seen[k.Value] = true
		if err := f(v); err != nil {
			var fe *FileError
			if errors.As(err, &fe) {
				return err
			}
			return p.errAt(v.Line, "%s.%s: %v", what, k.Value, err)
		}
	}
	return nil
}

// str, num, dur and list decode one scalar or sequence into dst.
func str(dst *string) func(*yaml.Node) error {
	return func(n *yaml.Node) error { return n.Decode(dst) }
}

func num[T int | int64 | uint64 | float64](dst *T) func(*yaml.Node) error {
	return func(n *yaml.Node) error { return n.Decode(dst) }
}

func boolean(dst *bool) func(*yaml.Node) error {
	return func(n *yaml.Node) error { return n.Decode(dst) }
}

func dur(dst *time.Duration) func(*yaml.Node) error {
	return func(n *yaml.Node) error {
		var s string
		if err := n.Decode(&s); err != nil {
			return err
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q is not a duration (like 30s or 2m)", s)
		}
		*dst = d
		return nil
	}
}

func list(dst *[]string) func(*yaml.Node) error {
	return func(n *yaml.Node) error {
		if n.Kind != yaml.SequenceNode {
			return errors.New("want a list")
		}
		return n.Decode(dst)
	}
}

func (p *parser) scenario(n *yaml.Node, sc *Scenario) error {
	var phases *yaml.Node
	err := p.fields(n, "scenario", map[string]func(*yaml.Node) error{
		"name": str(&sc.Name), "gateway": str(&sc.Gateway), "pki": str(&sc.PKI), "est": str(&sc.EST),
		"https": str(&sc.HTTPS), "repo": str(&sc.Repo), "seed": num(&sc.Seed),
		"cloud": func(v *yaml.Node) error {
			sc.Cloud = &Cloud{}
			return p.fields(v, "cloud", map[string]func(*yaml.Node) error{
				"url": str(&sc.Cloud.URL), "ca": str(&sc.Cloud.CA), "site": str(&sc.Cloud.Site),
				"token_file": str(&sc.Cloud.TokenFile),
			})
		},
		"phases": func(v *yaml.Node) error { phases = v; return nil },
	})
	if err != nil {
		return err
	}
	if phases == nil || phases.Kind != yaml.SequenceNode || len(phases.Content) == 0 {
		return p.errAt(n.Line, "scenario: no phases")
	}
	if sc.Cloud != nil && (sc.Cloud.Site == "" || !pki.ValidDeviceID(sc.Cloud.Site)) {
		return p.errAt(n.Line, "cloud: site %q is missing or not a site name", sc.Cloud.Site)
	}
	names := map[string]bool{}
	for i, pn := range phases.Content {
		ph, err := p.phase(pn, i+1, sc.Cloud != nil)
		if err != nil {
			return err
		}
		if names[ph.Name] {
			return p.errAt(pn.Line, "phase %q: name used twice", ph.Name)
		}
		names[ph.Name] = true
		sc.Phases = append(sc.Phases, ph)
	}
	return nil
}

func (p *parser) phase(n *yaml.Node, i int, cloud bool) (Phase, error) {
	ph := Phase{Name: fmt.Sprintf("phase %d", i), Line: n.Line, Drain: 5 * time.Second, Settle: 10 * time.Second}
	var fleets, expect *yaml.Node
	err := p.fields(n, fmt.Sprintf("phase %d", i), map[string]func(*yaml.Node) error{
		"name": str(&ph.Name), "duration": dur(&ph.Duration), "drain": dur(&ph.Drain), "settle": dur(&ph.Settle),
		"do":     func(v *yaml.Node) error { return p.actions(v, &ph, cloud) },
		"fleets": func(v *yaml.Node) error { fleets = v; return nil },
		"expect": func(v *yaml.Node) error { expect = v; return nil },
	})
	if err != nil {
		return ph, err
	}
	if ph.Duration <= 0 || ph.Duration > 24*time.Hour {
		return ph, p.errAt(n.Line, "phase %q: duration %v outside (0, 24h]", ph.Name, ph.Duration)
	}
	if ph.Drain < 0 || ph.Settle < 0 {
		return ph, p.errAt(n.Line, "phase %q: negative drain or settle", ph.Name)
	}
	if fleets == nil || fleets.Kind != yaml.SequenceNode || len(fleets.Content) == 0 {
		return ph, p.errAt(n.Line, "phase %q: no fleets", ph.Name)
	}
	prefixes := map[string]bool{}
	for j, fn := range fleets.Content {
		f, err := p.fleet(fn, ph.Name, j+1)
		if err != nil {
			return ph, err
		}
		if prefixes[f.Prefix] {
			return ph, p.errAt(fn.Line, "phase %q: two fleets with the device prefix %q", ph.Name, f.Prefix)
		}
		prefixes[f.Prefix] = true
		ph.Fleets = append(ph.Fleets, f)
	}
	if expect != nil {
		if ph.Expect, err = p.expectations(expect, ph.Name, cloud); err != nil {
			return ph, err
		}
	}
	return ph, nil
}

func (p *parser) actions(n *yaml.Node, ph *Phase, cloud bool) error {
	if n.Kind != yaml.SequenceNode {
		return p.errAt(n.Line, "phase %q: do: want a list", ph.Name)
	}
	for _, an := range n.Content {
		a := Action{Line: an.Line}
		err := p.fields(an, "do", map[string]func(*yaml.Node) error{"hook": str(&a.Hook), "exec": list(&a.Exec),
			"rollout": func(v *yaml.Node) (err error) { a.Rollout, err = p.rollout(v); return err }})
		if err != nil {
			return err
		}
		if kinds := b2i(a.Hook != "") + b2i(len(a.Exec) > 0) + b2i(a.Rollout != nil); kinds != 1 {
			return p.errAt(an.Line, "do: want exactly one of hook, exec or rollout")
		}
		if a.Rollout != nil && !cloud {
			return p.errAt(an.Line, "do: a rollout is published at the cloud: it needs a cloud section")
		}
		p.rollouts = p.rollouts || a.Rollout != nil
		ph.Do = append(ph.Do, a)
	}
	return nil
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (p *parser) fleet(n *yaml.Node, phase string, j int) (Fleet, error) {
	f := Fleet{Line: n.Line, Devices: 1, Rate: 1, MQTT: "5"}
	var qos int = 1
	err := p.fields(n, fmt.Sprintf("phase %q fleet %d", phase, j), map[string]func(*yaml.Node) error{
		"name": str(&f.Name), "prefix": str(&f.Prefix), "devices": num(&f.Devices), "kinds": list(&f.Kinds),
		"mqtt": str(&f.MQTT), "qos": func(v *yaml.Node) error { f.QoS = &qos; return v.Decode(&qos) },
		"rate": num(&f.Rate), "attack": str(&f.Attack), "attackers": num(&f.Attackers),
		"attack_budget": num(&f.AttackBudget), "attack_after": dur(&f.AttackAfter), "flap_every": dur(&f.FlapEvery),
		"clock_skew": dur(&f.ClockSkew), "offline": dur(&f.Offline), "enroll": boolean(&f.Enroll), "key": str(&f.Key),
		"window": num(&f.Window),
	})
	if err != nil {
		return f, err
	}
	if f.Name == "" {
		return f, p.errAt(n.Line, "phase %q fleet %d: no name", phase, j)
	}
	if f.Prefix == "" {
		f.Prefix = f.Name
	}
	if _, err := mqttVersion(f.MQTT); err != nil {
		return f, p.errAt(n.Line, "fleet %q: %v", f.Name, err)
	}
	for _, k := range f.Kinds {
		if !slices.Contains(physio.Kinds(), k) {
			return f, p.errAt(n.Line, "fleet %q: unknown kind %q (kinds: %s)", f.Name, k, strings.Join(physio.Kinds(), ", "))
		}
	}
	// The rest is checked where the fleet's own rules are.
	c := f.config(Scenario{Gateway: "127.0.0.1:1", PKI: "pki"}, 1, 0)
	if err := c.Validate(); err != nil {
		return f, p.errAt(n.Line, "fleet %q: %s", f.Name, strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return f, nil
}

func mqttVersion(s string) (int, error) {
	switch s {
	case "5", "":
		return fleet.MQTT5, nil
	case "3", "3.1.1":
		return fleet.MQTT3, nil
	case "mix":
		return fleet.MQTTMix, nil
	}
	return 0, fmt.Errorf("mqtt %q: want 3, 5 or mix", s)
}

// config is the fleet's configuration in scenario sc for a phase of the
// given duration and drain.
func (f Fleet) config(sc Scenario, seed int64, duration time.Duration) FleetConfig {
	c := fleet.Default()
	c.PKI, c.Gateway, c.Devices, c.Kinds, c.Rate, c.Duration = sc.PKI, sc.Gateway, f.Devices, f.Kinds, f.Rate, duration
	c.MQTT, _ = mqttVersion(f.MQTT)
	if f.QoS != nil {
		c.QoS = byte(*f.QoS)
	}
	c.Attack, c.Attackers, c.Prefix, c.Seed = f.Attack, f.Attackers, f.Prefix, seed
	if f.AttackBudget > 0 {
		c.AttackBudget = f.AttackBudget
	}
	c.AttackAfter, c.ClockSkew, c.Offline, c.Enroll = f.AttackAfter, f.ClockSkew, f.Offline, f.Enroll
	if f.FlapEvery > 0 {
		c.FlapEvery = f.FlapEvery
	}
	if f.Key != "" {
		c.Key = f.Key
	}
	if f.Window > 0 {
		c.Window = f.Window
	}
	if sc.EST != "" {
		c.EST = sc.EST
	}
	if sc.HTTPS != "" {
		c.HTTPS = sc.HTTPS
	} else {
		c.Updates = false
	}
	return c
}
