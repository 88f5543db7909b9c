package cli

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"

	"gopkg.in/yaml.v3"
)

// ParseConfig parses a command line whose flags are bound to the fields of a
// configuration that a YAML file can also set: the defaults, then the file
// named by the flag file, then the flags given on the command line.
//
// The flags of fs write into *cfg (fs.StringVar(&cfg.PKI, "pki", cfg.PKI,
// ...)), so *cfg holds the defaults when ParseConfig is called and the
// result when it returns. Flags are parsed as by [ParseFlags], and
// arguments after them are an error; the file is read as by [LoadYAML].
func ParseConfig[T any](fs *flag.FlagSet, args []string, out io.Writer, file *string, cfg *T) error {
	defaults := *cfg
	if err := ParseFlags(fs, args, out); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (see %s --help)", fs.Arg(0), fs.Name())
	}
	if *file == "" {
		return nil
	}
	path := *file
	*cfg = defaults
	if err := LoadYAML(path, cfg); err != nil {
		return err
	}
	// The flags again, over the file; they parsed once, so they parse again.
	return ParseFlags(fs, args, out)
}

// LoadYAML decodes the YAML file at path into dst (a pointer to a struct),
// over the values dst holds. An empty file changes nothing. A key that no
// field of dst has is an error naming it, its line and the keys that are
// valid there, so a misspelt setting is not silently ignored.
func LoadYAML(path string, dst any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	if len(doc.Content) == 0 {
		return nil // empty file
	}
	if err := checkKeys(doc.Content[0], reflect.TypeOf(dst), ""); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(dst); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

// UnknownKey is the error for a configuration key that is not one of valid.
func UnknownKey(key string, valid []string) error {
	return fmt.Errorf("unknown key %q (valid keys: %s)", key, strings.Join(valid, ", "))
}

var unmarshaler = reflect.TypeFor[yaml.Unmarshaler]()

// checkKeys reports the first key of the mapping n that type t has no field
// for, recursing into nested structs; prefix is the path of n ("rate.").
func checkKeys(n *yaml.Node, t reflect.Type, prefix string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || n.Kind != yaml.MappingNode || reflect.PointerTo(t).Implements(unmarshaler) {
		return nil // not a struct read key by key: the decoder checks the rest
	}
	fields, names := yamlFields(t)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Value == "<<" {
			continue // a merge key: its keys are checked where they are defined
		}
		ft, ok := fields[k.Value]
		if !ok {
			return fmt.Errorf("line %d: %w", k.Line, UnknownKey(prefix+k.Value, qualify(prefix, names)))
		}
		if err := checkKeys(v, ft, prefix+k.Value+"."); err != nil {
			return err
		}
	}
	return nil
}

// qualify prefixes each of names.
func qualify(prefix string, names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = prefix + n
	}
	return out
}

// yamlFields maps the YAML keys of struct type t to their field types, as
// yaml.v3 names them (the tag's name, else the lower-cased field name;
// inline structs contribute their fields); names lists the keys in field
// order.
func yamlFields(t reflect.Type) (fields map[string]reflect.Type, names []string) {
	fields = map[string]reflect.Type{}
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			tag := f.Tag.Get("yaml")
			if tag == "-" || (!f.IsExported() && !f.Anonymous) {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			if strings.Contains(","+opts+",", ",inline,") {
				if ft := f.Type; ft.Kind() == reflect.Struct {
					walk(ft)
				}
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			if _, dup := fields[name]; !dup {
				names = append(names, name)
			}
			fields[name] = f.Type
		}
	}
	walk(t)
	return fields, names
}

// listValue is a flag holding a comma-separated list (see [ListVar]).
type listValue struct{ p *[]string }

func (v listValue) String() string {
	if v.p == nil {
		return ""
	}
	return strings.Join(*v.p, ",")
}

func (v listValue) Set(s string) error {
	var l []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			l = append(l, e)
		}
	}
	*v.p = l
	return nil
}

func (v listValue) Get() any { return *v.p }

// ListVar defines a flag whose value, a comma-separated list, sets *p: its
// items with spaces trimmed, empty ones dropped. The default shown is *p.
func ListVar(fs *flag.FlagSet, p *[]string, name, usage string) {
	fs.Var(listValue{p}, name, usage)
}
