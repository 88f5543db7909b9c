package fhir

import (
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/google/fhir/go/fhirversion"
	"github.com/google/fhir/go/jsonformat"
)

// The first independent implementation: Google's FHIR protocol buffers
// and their R4 JSON parser, which checks every element's name and type,
// cardinality, required elements, primitive formats (dates, decimals,
// codes, ids, base64) and reference targets.

var r4 = sync.OnceValues(func() (*jsonformat.Unmarshaller, error) {
	return jsonformat.NewUnmarshaller("UTC", fhirversion.R4)
})

// gofhirCheck parses b (one resource, or a Bundle with its entries) with
// the R4 parser.
func gofhirCheck(t *testing.T, b []byte) error {
	t.Helper()
	u, err := r4()
	if err != nil {
		t.Fatalf("R4 parser: %v", err)
	}
	_, err = u.Unmarshal(b)
	return err
}

// resources splits a bundle into its entries' resources, as JSON.
func resources(t *testing.T, b []byte) [][]byte {
	t.Helper()
	var bun struct {
		Entry []struct {
			Resource json.RawMessage `json:"resource"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(b, &bun); err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, e := range bun.Entry {
		out = append(out, e.Resource)
	}
	return out
}

// allBundles are the bundles of every kind, hand-made and simulated,
// verified (with a Provenance) and not, with and without a patient.
func allBundles(t *testing.T) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	add := func(name string, in Input) {
		b, err := Bundle(in)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out[name] = b
	}
	for kind, rec := range kindRecords() {
		add(kind+"/verified", Input{Msg: signedMessage(t, rec), Verified: true, Patient: "Patient/p-17"})
		add(kind+"/unverified", Input{Msg: signedMessage(t, rec)})
	}
	for _, rec := range simulated(t) {
		add("simulated "+rec.Kind, Input{Msg: signedMessage(t, rec), Verified: true, Patient: "https://fhir.example/r4/Patient/9"})
	}
	return out
}

func TestGoogleFHIRParsesEveryBundleAndResource(t *testing.T) {
	for name, b := range allBundles(t) {
		if err := gofhirCheck(t, b); err != nil {
			t.Errorf("%s: bundle refused: %v\n%s", name, err, b)
		}
		for i, r := range resources(t, b) {
			if err := gofhirCheck(t, r); err != nil {
				t.Errorf("%s: entry %d refused: %v\n%s", name, i, err, r)
			}
		}
	}
}

// broken are resources of a bundle, each broken in one way that an R4
// parser must refuse: they prove the validators bite.
func broken(t *testing.T) map[string][]byte {
	t.Helper()
	b, err := Bundle(Input{Msg: signedMessage(t, kindRecords()["bp"]), Verified: true, Patient: "Patient/p-17"})
	if err != nil {
		t.Fatal(err)
	}
	rs := resources(t, b)
	obs, prov := string(rs[1]), string(rs[len(rs)-1])
	edit := func(s, old, new string) []byte {
		if !strings.Contains(s, old) {
			t.Fatalf("%q not in %s", old, s)
		}
		return []byte(strings.Replace(s, old, new, 1))
	}
	return map[string][]byte{
		"observation without status":    edit(obs, `"status":"final",`, ``),
		"observation of unknown status": edit(obs, `"status":"final"`, `"status":"done"`),
		"month 13":                      edit(obs, `"effectiveDateTime":"2026-01`, `"effectiveDateTime":"2026-13`),
		"a value that is a string":      edit(obs, `"value":128`, `"value":"128"`),
		"an element R4 lacks":           edit(obs, `"status":"final"`, `"status":"final","vitalgate":1`),
		"signature data not base64":     edit(prov, `"data":"`, `"data":"*`),
		"provenance without recorded":   edit(prov, `"recorded":"2026-01-01T00:59:00.973Z",`, ``),
	}
}

func TestGoogleFHIRRefusesBrokenResources(t *testing.T) {
	for name, r := range broken(t) {
		err := gofhirCheck(t, r)
		if err == nil {
			t.Errorf("%s: accepted\n%s", name, r)
			continue
		}
		t.Logf("%s: refused: %v", name, err)
	}
}
