package sim

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/vitalgate/vitalgate/internal/fleet"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// Expectation is one outcome a phase must have: Metric (see [Metrics])
// compared as Want says.
type Expectation struct {
	Metric string // e.g. "acked", "rejected.bad_signature", "events.replay"
	Want   string // as written: "10", ">= 10", "< 500", "5..20"
	Line   int
	op     string
	a, b   float64
}

// Metrics lists the plain metrics an expectation may name. Besides them:
// rejected.{verdict} (messages answered with that verdict's MQTT 5 reason
// code, which several verdicts share, or matched by the fleet's attack of
// that name; MQTT 3.1.1 devices see no rejections), events.{name} (security events at the cloud with
// that verdict or event name during the phase; needs cloud),
// attack.{sent|matched} and rollout.{name} (see [RolloutMetrics]; needs a
// rollout action in the phase or an earlier one, as updated does: the
// devices of the rollout's model whose inventory entry at the cloud shows
// its version).
func Metrics() []string {
	return []string{"sent", "acked", "generated", "resent", "duplicates", "dropped", "buffered", "errors",
		"connects", "connect_errors", "tls_refused", "enrolments", "renewals", "enrol_errors",
		"p50_ms", "p99_ms", "delivered", "lost", "updated"}
}

// cloudMetrics need a cloud section.
var cloudMetrics = []string{"delivered", "lost", "updated"}

func (p *parser) expectations(n *yaml.Node, phase string, cloud bool) ([]Expectation, error) {
	if n.Kind != yaml.MappingNode {
		return nil, p.errAt(n.Line, "phase %q: expect: want a mapping", phase)
	}
	var out []Expectation
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch {
		case k.Value == "rejected" || k.Value == "events" || k.Value == "attack" || k.Value == "rollout":
			if v.Kind != yaml.MappingNode {
				return nil, p.errAt(v.Line, "expect.%s: want a mapping of names to counts", k.Value)
			}
			for j := 0; j+1 < len(v.Content); j += 2 {
				e, err := p.expectation(k.Value+"."+v.Content[j].Value, v.Content[j], v.Content[j+1], cloud)
				if err != nil {
					return nil, err
				}
				out = append(out, e)
			}
		default:
			e, err := p.expectation(k.Value, k, v, cloud)
			if err != nil {
				return nil, err
			}
			out = append(out, e)
		}
	}
	return out, nil
}

func (p *parser) expectation(metric string, k, v *yaml.Node, cloud bool) (Expectation, error) {
	e := Expectation{Metric: metric, Line: k.Line}
	group, name, _ := strings.Cut(metric, ".")
	switch group {
	case "rejected":
		if !slices.Contains(verdict.Rejections(), verdict.Verdict(name)) {
			return e, p.errAt(k.Line, "expect: %q is not a verdict (verdicts: %s)", name, verdictList())
		}
	case "events":
		if !cloud {
			return e, p.errAt(k.Line, "expect: %s needs a cloud section", metric)
		}
		if !verdict.IsEventName(name) {
			return e, p.errAt(k.Line, "expect: %q is not an event name (events: the verdicts but accepted, %s)", name,
				strings.Join(verdict.Events(), ", "))
		}
	case "attack":
		if name != "sent" && name != "matched" {
			return e, p.errAt(k.Line, "expect: attack.%s: want attack.sent or attack.matched", name)
		}
	case "rollout":
		if !slices.Contains(RolloutMetrics(), name) {
			return e, p.errAt(k.Line, "expect: unknown rollout metric %q (rollout metrics: %s)", name, strings.Join(RolloutMetrics(), ", "))
		}
		if !p.rollouts {
			return e, p.errAt(k.Line, "expect: %s needs a rollout action in this phase or an earlier one", metric)
		}
	default:
		if !slices.Contains(Metrics(), metric) {
			return e, p.errAt(k.Line, "expect: unknown metric %q (metrics: %s, rejected.VERDICT, events.NAME, attack.sent, attack.matched, rollout.NAME)",
				metric, strings.Join(Metrics(), ", "))
		}
		if !cloud && slices.Contains(cloudMetrics, metric) {
			return e, p.errAt(k.Line, "expect: %s needs a cloud section", metric)
		}
		if metric == "updated" && !p.rollouts {
			return e, p.errAt(k.Line, "expect: updated needs a rollout action in this phase or an earlier one")
		}
	}
	if v.Kind != yaml.ScalarNode {
		return e, p.errAt(v.Line, "expect: %s: want a count, a comparison or a range", metric)
	}
	e.Want = v.Value
	if err := e.parse(); err != nil {
		return e, p.errAt(v.Line, "expect: %s: %v", metric, err)
	}
	return e, nil
}

func verdictList() string {
	var s []string
	for _, v := range verdict.Rejections() {
		s = append(s, string(v))
	}
	return strings.Join(s, ", ")
}

// parse reads Want: "N", "OP N" (OP one of == != < <= > >=) or "A..B".
func (e *Expectation) parse() error {
	w := strings.TrimSpace(e.Want)
	if lo, hi, ok := strings.Cut(w, ".."); ok {
		a, err1 := strconv.ParseFloat(strings.TrimSpace(lo), 64)
		b, err2 := strconv.ParseFloat(strings.TrimSpace(hi), 64)
		if err1 != nil || err2 != nil || a > b || math.IsNaN(a) || math.IsNaN(b) {
			return fmt.Errorf("%q is not a range (like 5..20)", e.Want)
		}
		e.op, e.a, e.b = "..", a, b
		return nil
	}
	e.op = "=="
	for _, op := range []string{"==", "!=", "<=", ">=", "<", ">"} {
		if strings.HasPrefix(w, op) {
			e.op, w = op, strings.TrimSpace(w[len(op):])
			break
		}
	}
	a, err := strconv.ParseFloat(w, 64)
	if err != nil || math.IsNaN(a) || math.IsInf(a, 0) {
		return fmt.Errorf("%q: want a count, a comparison (>= 10) or a range (5..20)", e.Want)
	}
	e.a = a
	return nil
}

// Holds reports whether got meets the expectation.
func (e Expectation) Holds(got float64) bool {
	switch e.op {
	case "..":
		return got >= e.a && got <= e.b
	case "!=":
		return got != e.a
	case "<":
		return got < e.a
	case "<=":
		return got <= e.a
	case ">":
		return got > e.a
	case ">=":
		return got >= e.a
	}
	return got == e.a
}

// String is "acked >= 10".
func (e Expectation) String() string {
	if e.op == ".." {
		return fmt.Sprintf("%s in %s", e.Metric, e.Want)
	}
	if e.op == "==" && !strings.HasPrefix(strings.TrimSpace(e.Want), "==") {
		return fmt.Sprintf("%s == %s", e.Metric, e.Want)
	}
	return fmt.Sprintf("%s %s", e.Metric, e.Want)
}

// fleetMetrics are the metrics of one fleet's report.
func fleetMetrics(r fleet.Report) map[string]float64 {
	s := r.Stats
	m := map[string]float64{
		"sent": float64(s.Sent), "acked": float64(s.Acked), "generated": float64(s.Generated),
		"resent": float64(s.Resent), "duplicates": float64(s.Duplicates), "dropped": float64(s.Dropped),
		"buffered": float64(s.Buffered), "errors": float64(s.Errors), "connects": float64(s.Connects),
		"connect_errors": float64(s.ConnectErrors), "tls_refused": float64(s.TLSRefused),
		"enrolments": float64(s.Enrolments), "renewals": float64(s.Renewals), "enrol_errors": float64(s.EnrolErrors),
		"p50_ms": s.P50MS, "p99_ms": s.P99MS,
	}
	for _, v := range verdict.Rejections() {
		// Answers with the verdict's reason code. Verdicts share codes
		// (replay, stale and future are all 0x83): only the fleet's own
		// attack is counted by name; events.{verdict} tells them apart.
		n := s.Rejected[fmt.Sprintf("0x%02x", v.Code().Code)]
		if r.Config.Attack == string(v) {
			n += s.Rejected[string(v)]
		}
		m["rejected."+string(v)] = float64(n)
	}
	if r.Attack != nil {
		m["attack.sent"], m["attack.matched"] = float64(r.Attack.Sent), float64(r.Attack.Matched)
	}
	return m
}

// merge adds the metrics of one fleet into the phase's: counts add up,
// latencies take the largest.
func merge(into, m map[string]float64) {
	for k, v := range m {
		if k == "p50_ms" || k == "p99_ms" {
			into[k] = max(into[k], v)
			continue
		}
		into[k] += v
	}
}
