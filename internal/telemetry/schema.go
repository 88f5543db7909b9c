package telemetry

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"sync"

	"gopkg.in/yaml.v3"

	"github.com/vitalgate/vitalgate/internal/verdict"
)

//go:embed schemas.yaml
var defaultSchemasYAML []byte

// DefaultSchemasYAML returns the embedded default schema file, for a
// deployment to copy and extend.
func DefaultSchemasYAML() []byte { return bytes.Clone(defaultSchemasYAML) }

// Schemas holds the schema of each record kind. It is immutable once built
// and safe for concurrent use; reloading means building a new one.
type Schemas struct {
	kinds map[string]*kindSchema
}

type kindSchema struct {
	name  string
	obs   []ObsSpec
	index map[string]int
	rules []greaterRule
}

type greaterRule struct{ a, b int }

// ObsSpec is the schema of one observation code within a kind.
type ObsSpec struct {
	Code     string  `yaml:"code"`
	Unit     string  `yaml:"unit"`
	Min      float64 `yaml:"min"`
	Max      float64 `yaml:"max"`
	Required bool    `yaml:"required"`
	Waveform bool    `yaml:"waveform"`
}

// schemaFile is the YAML format of schemas.yaml.
type schemaFile struct {
	Kinds map[string]struct {
		Obs []struct {
			Code     string   `yaml:"code"`
			Unit     string   `yaml:"unit"`
			Min      *float64 `yaml:"min"`
			Max      *float64 `yaml:"max"`
			Required bool     `yaml:"required"`
			Waveform bool     `yaml:"waveform"`
		} `yaml:"obs"`
		Rules []struct {
			Greater []string `yaml:"greater"`
		} `yaml:"rules"`
	} `yaml:"kinds"`
}

var defaultSchemas = sync.OnceValue(func() *Schemas {
	s, err := ParseSchemas(defaultSchemasYAML, "schemas.yaml (embedded)")
	if err != nil {
		panic(err)
	}
	return s
})

// DefaultSchemas returns the schemas of docs/protocol.md#the-record, read once from
// the embedded schemas.yaml. The result is shared and must not be modified.
func DefaultSchemas() *Schemas { return defaultSchemas() }

// LoadSchemas reads a deployment's schema file (the format of the embedded
// schemas.yaml; unknown fields are errors). It replaces the defaults: copy
// [DefaultSchemasYAML] to keep them.
func LoadSchemas(path string) (*Schemas, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load schemas: %w", err)
	}
	return ParseSchemas(b, path)
}

// ParseSchemas parses a schema file's content; name labels the errors. It
// reports every problem it finds at once.
func ParseSchemas(data []byte, name string) (*Schemas, error) {
	var f schemaFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("schemas %s: %w", name, err)
	}
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("schemas %s: "+format, append([]any{name}, args...)...))
	}
	if len(f.Kinds) == 0 {
		bad("no kinds")
	}
	s := &Schemas{kinds: make(map[string]*kindSchema, len(f.Kinds))}
	for kind, k := range f.Kinds {
		ks := &kindSchema{name: kind, index: make(map[string]int, len(k.Obs))}
		if kind == "" {
			bad("empty kind name")
		}
		if len(k.Obs) == 0 {
			bad("kind %s: no obs", kind)
		}
		required := 0
		for i, o := range k.Obs {
			spec := ObsSpec{Code: o.Code, Unit: o.Unit, Required: o.Required, Waveform: o.Waveform}
			switch {
			case o.Code == "":
				bad("kind %s: obs %d: no code", kind, i)
			case o.Unit == "":
				bad("kind %s: %s: no unit", kind, o.Code)
			case o.Min == nil || o.Max == nil:
				bad("kind %s: %s: min and max are required", kind, o.Code)
			case !finite(*o.Min) || !finite(*o.Max) || *o.Min > *o.Max:
				bad("kind %s: %s: bad range %v..%v", kind, o.Code, *o.Min, *o.Max)
			default:
				spec.Min, spec.Max = *o.Min, *o.Max
			}
			if _, dup := ks.index[o.Code]; dup {
				bad("kind %s: duplicate code %s", kind, o.Code)
			}
			if o.Required {
				required++
			}
			ks.index[o.Code] = len(ks.obs)
			ks.obs = append(ks.obs, spec)
		}
		if len(k.Obs) > 0 && required == 0 {
			bad("kind %s: no required code", kind)
		}
		for i, r := range k.Rules {
			if len(r.Greater) != 2 {
				bad("kind %s: rule %d: greater takes two codes", kind, i)
				continue
			}
			a, okA := ks.index[r.Greater[0]]
			b, okB := ks.index[r.Greater[1]]
			if !okA || !okB || a == b {
				bad("kind %s: rule %d: greater needs two different codes of the kind", kind, i)
				continue
			}
			if ks.obs[a].Waveform || ks.obs[b].Waveform {
				bad("kind %s: rule %d: greater compares scalar codes only", kind, i)
				continue
			}
			ks.rules = append(ks.rules, greaterRule{a, b})
		}
		s.kinds[kind] = ks
	}
	if len(errs) > 0 {
		sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// Kinds lists the known kinds, sorted.
func (s *Schemas) Kinds() []string {
	out := make([]string, 0, len(s.kinds))
	for k := range s.kinds {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Spec returns the observation schemas of a kind (a copy), or false.
func (s *Schemas) Spec(kind string) ([]ObsSpec, bool) {
	ks, ok := s.kinds[kind]
	if !ok {
		return nil, false
	}
	return append([]ObsSpec(nil), ks.obs...), true
}

// Check judges a decoded record against its kind's schema. It returns nil or
// a [*verdict.Error] with verdict Schema whose detail names the first rule
// broken, for example "bp: MDC_PRESS_BLD_NONINV_SYS 400 mm[Hg] outside 20..300".
// Abnormal but possible values pass: only impossible ones fail.
func (s *Schemas) Check(r *Record) error {
	if r == nil {
		return verdict.New(verdict.Schema, "no record")
	}
	if r.V != Version {
		return verdict.New(verdict.Schema, "unsupported version %d", r.V)
	}
	ks, ok := s.kinds[r.Kind]
	if !ok {
		return verdict.New(verdict.Schema, "unknown kind %s", quote(r.Kind))
	}
	kind := ks.name
	if len(r.Obs) == 0 {
		return verdict.New(verdict.Schema, "%s: no observations", kind)
	}
	if len(r.Obs) > MaxObservations {
		return verdict.New(verdict.Schema, "%s: %d observations, max %d", kind, len(r.Obs), MaxObservations)
	}
	if r.Bat != nil && *r.Bat > 100 {
		return verdict.New(verdict.Schema, "bat %d outside 0..100", *r.Bat)
	}
	// seen[i] is 1 + the index in r.Obs of spec i's observation.
	var seenBuf [16]int
	var seen []int
	if len(ks.obs) <= len(seenBuf) {
		seen = seenBuf[:len(ks.obs)]
	} else {
		seen = make([]int, len(ks.obs))
	}
	for i := range r.Obs {
		o := &r.Obs[i]
		si, ok := ks.index[o.Code]
		if !ok {
			return verdict.New(verdict.Schema, "%s: unknown code %s", kind, quote(o.Code))
		}
		spec := &ks.obs[si]
		if seen[si] != 0 {
			return verdict.New(verdict.Schema, "%s: duplicate code %s", kind, spec.Code)
		}
		seen[si] = i + 1
		if o.Unit != spec.Unit {
			return verdict.New(verdict.Schema, "%s: %s unit %s, want %s", kind, spec.Code, quote(o.Unit), strconv.Quote(spec.Unit))
		}
		if err := checkValue(kind, spec, o); err != nil {
			return err
		}
	}
	for si := range ks.obs {
		if ks.obs[si].Required && seen[si] == 0 {
			return verdict.New(verdict.Schema, "%s: missing %s", kind, ks.obs[si].Code)
		}
	}
	for _, rule := range ks.rules {
		ia, ib := seen[rule.a], seen[rule.b]
		if ia == 0 || ib == 0 {
			continue
		}
		a, b := r.Obs[ia-1].Val.Num, r.Obs[ib-1].Val.Num
		if !(a > b) {
			return verdict.New(verdict.Schema, "%s: %s %s not greater than %s %s", kind,
				ks.obs[rule.a].Code, num(a), ks.obs[rule.b].Code, num(b))
		}
	}
	return nil
}

func checkValue(kind string, spec *ObsSpec, o *Observation) error {
	if !spec.Waveform {
		if o.Val.Samples != nil {
			return verdict.New(verdict.Schema, "%s: %s takes one value, got samples", kind, spec.Code)
		}
		if o.PeriodMS != nil {
			return verdict.New(verdict.Schema, "%s: %s: period_ms without samples", kind, spec.Code)
		}
		if v := o.Val.Num; !(v >= spec.Min && v <= spec.Max) {
			return verdict.New(verdict.Schema, "%s: %s %s %s outside %s..%s", kind, spec.Code, num(v), spec.Unit, num(spec.Min), num(spec.Max))
		}
		return nil
	}
	switch n := len(o.Val.Samples); {
	case o.Val.Samples == nil:
		return verdict.New(verdict.Schema, "%s: %s needs samples, got one value", kind, spec.Code)
	case n == 0:
		return verdict.New(verdict.Schema, "%s: %s has no samples", kind, spec.Code)
	case n > MaxSamples:
		return verdict.New(verdict.Schema, "%s: %s has %d samples, max %d", kind, spec.Code, n, MaxSamples)
	case o.PeriodMS == nil:
		return verdict.New(verdict.Schema, "%s: %s: samples without period_ms", kind, spec.Code)
	case *o.PeriodMS == 0:
		return verdict.New(verdict.Schema, "%s: %s: period_ms 0", kind, spec.Code)
	}
	lo, hi := spec.Min, spec.Max
	for i, v := range o.Val.Samples {
		if !(v >= lo && v <= hi) {
			return verdict.New(verdict.Schema, "%s: %s sample %d: %s %s outside %s..%s", kind, spec.Code, i, num(v), spec.Unit, num(lo), num(hi))
		}
	}
	return nil
}

func num(f float64) string {
	if math.IsNaN(f) {
		return "NaN"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// quote quotes a peer-controlled string for a detail, cut to a safe length.
func quote(s string) string {
	const max = 64
	if len(s) > max {
		return strconv.Quote(s[:max]) + "..."
	}
	return strconv.Quote(s)
}
