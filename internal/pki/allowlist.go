package pki

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"gopkg.in/yaml.v3"

	"github.com/vitalgate/vitalgate/internal/fileerr"
)

// MaxAllowListSize bounds the allow-list file [ReadAllowList] reads.
const MaxAllowListSize = 16 << 20

// allowListHeader is the comment of a new allow-list (the one [Init] writes).
const allowListHeader = "# the enrolment allow-list: which factory identity may enrol as which device ID\n"

// AllowEntry is one entry of the enrolment allow-list (enroll.yaml): the factory identity Serial (the IDevID's
// subject serialNumber, or its certificate serial in lowercase hex) may enrol as device ID.
type AllowEntry struct {
	Serial string `yaml:"serial"`
	ID     string `yaml:"id"`
	// Manufacturer, when given, names the only issuer (manufacturers/NAME.crt) whose factory identity with this
	// serial may enrol: without it, any accepted manufacturer's identity with the serial would.
	Manufacturer string `yaml:"manufacturer,omitempty"`
}

// ReadAllowList reads the allow-list at path: a YAML list of maps {serial: "...", id: "..."}. It is strict: an
// unknown key, a missing or empty field, an invalid device ID, or a serial or ID listed twice is an error naming
// the file, the entry and its line. A missing file is an empty list; a file over [MaxAllowListSize] is refused.
func ReadAllowList(path string) ([]AllowEntry, error) {
	doc, err := readAllowDoc(path)
	if err != nil || doc == nil {
		return nil, err
	}
	return allowEntries(path, doc)
}

// readAllowDoc reads and parses the allow-list file at path into its YAML sequence node; nil (and no error) for a
// missing or empty file.
func readAllowDoc(path string) (*yaml.Node, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fileerr.Wrap("read allow-list", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxAllowListSize+1))
	if err != nil {
		return nil, fileerr.Wrap("read allow-list", path, err)
	}
	if len(data) > MaxAllowListSize {
		return nil, fmt.Errorf("%s: allow-list larger than %d bytes", path, MaxAllowListSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: more than one YAML document", path)
	}
	if len(doc.Content) != 1 {
		return nil, fmt.Errorf("%s: not a YAML list", path)
	}
	seq := doc.Content[0]
	if seq.Kind == yaml.ScalarNode && seq.Tag == "!!null" {
		return nil, nil
	}
	if seq.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("%s:%d: want a list of {serial, id}", path, seq.Line)
	}
	return &doc, nil
}

// allowEntries checks the entries of a parsed allow-list (doc from readAllowDoc) and returns them in order.
func allowEntries(path string, doc *yaml.Node) ([]AllowEntry, error) {
	items := doc.Content[0].Content
	out := make([]AllowEntry, 0, len(items))
	serials := make(map[string]int, len(items))
	ids := make(map[string]int, len(items))
	for i, n := range items {
		e, err := allowEntry(n)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: entry %d: %w", path, n.Line, i+1, err)
		}
		if j, dup := serials[e.Serial]; dup {
			return nil, fmt.Errorf("%s:%d: entry %d: serial %q already listed by entry %d", path, n.Line, i+1, e.Serial, j+1)
		}
		if j, dup := ids[e.ID]; dup {
			return nil, fmt.Errorf("%s:%d: entry %d: device ID %q already listed by entry %d", path, n.Line, i+1, e.ID, j+1)
		}
		serials[e.Serial], ids[e.ID] = i, i
		out = append(out, e)
	}
	return out, nil
}

// allowEntry decodes one allow-list entry: a map with exactly the string keys serial and id.
func allowEntry(n *yaml.Node) (AllowEntry, error) {
	var e AllowEntry
	if n.Kind != yaml.MappingNode {
		return e, errors.New("not a map {serial, id}")
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		var dst *string
		switch k.Value {
		case "serial":
			dst = &e.Serial
		case "id":
			dst = &e.ID
		case "manufacturer":
			dst = &e.Manufacturer
		default:
			return e, fmt.Errorf("unknown key %q (want serial, id and manufacturer)", k.Value)
		}
		if *dst != "" {
			return e, fmt.Errorf("key %q given twice", k.Value)
		}
		if v.Kind != yaml.ScalarNode || v.Tag == "!!null" || v.Value == "" {
			return e, fmt.Errorf("key %q: want a non-empty string", k.Value)
		}
		*dst = v.Value
	}
	switch {
	case e.Serial == "":
		return e, errors.New("missing serial")
	case e.ID == "":
		return e, fmt.Errorf("serial %q: missing id", e.Serial)
	case len(e.Serial) > 256:
		return e, fmt.Errorf("serial of %d characters (at most 256)", len(e.Serial))
	case !ValidDeviceID(e.ID):
		return e, fmt.Errorf("serial %q: invalid device ID %q (want "+idSyntax+")", e.Serial, e.ID)
	case e.Manufacturer != "" && !ValidDeviceID(e.Manufacturer):
		return e, fmt.Errorf("serial %q: invalid manufacturer %q", e.Serial, e.Manufacturer)
	}
	return e, nil
}

// AppendAllowList adds entries to DIR/enroll.yaml under the PKI directory's writer lock ([LockDir]), skipping
// those listed already; an entry whose serial or ID is listed with another ID or serial is refused, and nothing is
// written. The file's comments are kept; it is replaced atomically.
func AppendAllowList(dir string, entries []AllowEntry) error {
	release, err := LockDir(dir)
	if err != nil {
		return err
	}
	defer release()
	return appendAllowList(dir, entries)
}

// appendAllowList is [AppendAllowList] for a caller that holds the writer lock.
func appendAllowList(dir string, entries []AllowEntry) error {
	path := filepath.Join(dir, FileEnroll)
	doc, err := readAllowDoc(path)
	if err != nil {
		return err
	}
	if doc == nil {
		doc = &yaml.Node{Kind: yaml.DocumentNode, HeadComment: allowListHeader[:len(allowListHeader)-1],
			Content: []*yaml.Node{{Kind: yaml.SequenceNode, Tag: "!!seq"}}}
	}
	old, err := allowEntries(path, doc)
	if err != nil {
		return err
	}
	add, err := newAllowEntries(path, old, entries)
	if err != nil || len(add) == 0 {
		return err
	}
	seq := doc.Content[0]
	seq.Style = 0 // block style: one entry a line, even after the "[]" of a new list
	for _, e := range add {
		seq.Content = append(seq.Content, &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Style: yaml.FlowStyle,
			Content: []*yaml.Node{
				{Kind: yaml.ScalarNode, Tag: "!!str", Value: "serial"},
				{Kind: yaml.ScalarNode, Tag: "!!str", Value: e.Serial, Style: yaml.DoubleQuotedStyle},
				{Kind: yaml.ScalarNode, Tag: "!!str", Value: "id"},
				{Kind: yaml.ScalarNode, Tag: "!!str", Value: e.ID, Style: yaml.DoubleQuotedStyle},
			}})
		if e.Manufacturer != "" {
			m := seq.Content[len(seq.Content)-1]
			m.Content = append(m.Content,
				&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "manufacturer"},
				&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: e.Manufacturer, Style: yaml.DoubleQuotedStyle})
		}
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return fmt.Errorf("%s: encode allow-list: %w", path, err)
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("%s: encode allow-list: %w", path, err)
	}
	return writeFile(path, buf.Bytes(), 0o644, true)
}

// newAllowEntries returns the entries of add that old does not list, after checking each (a valid entry, not in
// conflict with old or with another entry of add).
func newAllowEntries(path string, old, add []AllowEntry) ([]AllowEntry, error) {
	bySerial := make(map[string]string, len(old)+len(add))
	byID := make(map[string]string, len(old)+len(add))
	for _, e := range old {
		bySerial[e.Serial], byID[e.ID] = e.ID, e.Serial
	}
	var out []AllowEntry
	for _, e := range add {
		switch {
		case e.Serial == "" || len(e.Serial) > 256:
			return nil, fmt.Errorf("%s: add %q as %q: serial must have 1 to 256 characters", path, e.Serial, e.ID)
		case !ValidDeviceID(e.ID):
			return nil, fmt.Errorf("%s: add %q: invalid device ID %q (want "+idSyntax+")", path, e.Serial, e.ID)
		}
		id, sOK := bySerial[e.Serial]
		serial, iOK := byID[e.ID]
		switch {
		case sOK && id == e.ID:
			continue // listed already
		case sOK:
			return nil, fmt.Errorf("%s: serial %q is listed as device %q, not %q", path, e.Serial, id, e.ID)
		case iOK:
			return nil, fmt.Errorf("%s: device %q is listed with serial %q, not %q", path, e.ID, serial, e.Serial)
		}
		bySerial[e.Serial], byID[e.ID] = e.ID, e.Serial
		out = append(out, e)
	}
	return out, nil
}
