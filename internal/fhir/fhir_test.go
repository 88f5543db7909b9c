package fhir

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// decoded is a bundle read back generically, as a consumer reads it.
type decoded struct {
	ResourceType string `json:"resourceType"`
	Type         string `json:"type"`
	Entry        []struct {
		FullURL  string         `json:"fullUrl"`
		Resource map[string]any `json:"resource"`
		Request  struct {
			Method, URL, IfNoneExist string
		} `json:"request"`
	} `json:"entry"`
}

func decode(t *testing.T, b []byte) decoded {
	t.Helper()
	var d decoded
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("bundle is not JSON: %v\n%s", err, b)
	}
	if d.ResourceType != "Bundle" || d.Type != "transaction" {
		t.Fatalf("resourceType %q type %q, want a transaction Bundle", d.ResourceType, d.Type)
	}
	return d
}

// get walks a decoded resource by keys and array indexes.
func get(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, _ := v.(map[string]any)
			v = m[k]
		case int:
			a, _ := v.([]any)
			if k >= len(a) {
				return nil
			}
			v = a[k]
		}
	}
	return v
}

// wantObs is what one Observation of a kind must say.
type wantObs struct {
	profile string
	mdc     string   // numeric MDC code of Observation.code
	loinc   []string // LOINC codes after it
	value   string   // valueQuantity.value, "" for none
	unit    string
	comps   []string // MDC codes of the components, then their values
}

var wantKinds = map[string][]wantObs{
	"spo2": {
		{profile: ProfileNumeric, mdc: "150456", loinc: []string{"2708-6", "59408-5"}, value: "97", unit: "%"},
		{profile: ProfileNumeric, mdc: "149530", loinc: []string{"8867-4"}, value: "72", unit: "/min"},
	},
	"bp": {
		{profile: ProfileCompound, mdc: "150020", loinc: []string{"85354-9"},
			comps: []string{"150021", "128", "150022", "82", "150023", "97.3"}},
		{profile: ProfileNumeric, mdc: "149546", loinc: []string{"8867-4"}, value: "66", unit: "/min"},
	},
	"glucose": {{profile: ProfileNumeric, mdc: "160184", loinc: []string{"41653-7"}, value: "104", unit: "mg/dL"}},
	"temp":    {{profile: ProfileNumeric, mdc: "150364", loinc: []string{"8310-5"}, value: "36.6", unit: "Cel"}},
	"weight":  {{profile: ProfileNumeric, mdc: "188736", loinc: []string{"29463-7"}, value: "71.25", unit: "kg"}},
	"ecg":     {{profile: ProfileRtsa, mdc: "131330"}},
}

func TestBundleEveryKind(t *testing.T) {
	for kind, rec := range kindRecords() {
		t.Run(kind, func(t *testing.T) {
			m := signedMessage(t, rec)
			b, err := Bundle(Input{Msg: m, Verified: true, Patient: "Patient/p-17"})
			if err != nil {
				t.Fatal(err)
			}
			d := decode(t, b)
			want := wantKinds[kind]
			if len(d.Entry) != 1+len(want)+1 {
				t.Fatalf("%d entries, want Device, %d Observations, Provenance:\n%s", len(d.Entry), len(want), b)
			}
			checkDevice(t, d, kind)
			for i, w := range want {
				checkObservation(t, d, 1+i, w, m)
			}
			checkProvenance(t, d, d.Entry[len(d.Entry)-1].Resource, m, len(want))
		})
	}
}

func checkDevice(t *testing.T, d decoded, kind string) {
	t.Helper()
	e := d.Entry[0]
	if e.Resource["resourceType"] != "Device" || e.Request.Method != "PUT" ||
		e.Request.URL != "Device?identifier="+url.QueryEscape("urn:vitalgate:device|dev-00001") {
		t.Fatalf("first entry: %v %s %s, want the Device PUT by identifier", e.Resource["resourceType"], e.Request.Method, e.Request.URL)
	}
	if get(e.Resource, "identifier", 0, "value") != "dev-00001" || get(e.Resource, "patient", "reference") != "Patient/p-17" {
		t.Errorf("device identifier or patient wrong: %v", e.Resource)
	}
	if get(e.Resource, "specialization", 0, "systemType", "coding", 0, "code") != deviceTypes[kind].Code {
		t.Errorf("device specialization %v, want %s", get(e.Resource, "specialization"), deviceTypes[kind].Code)
	}
}

func checkObservation(t *testing.T, d decoded, i int, w wantObs, m *wire.Message) {
	t.Helper()
	e := d.Entry[i]
	o := e.Resource
	if o["resourceType"] != "Observation" || get(o, "meta", "profile", 0) != w.profile || o["status"] != "final" {
		t.Fatalf("entry %d: %v profile %v status %v, want a final %s", i, o["resourceType"], get(o, "meta", "profile"), o["status"], w.profile)
	}
	own := m.ID + "/" + w.mdc
	if e.Request.Method != "POST" || e.Request.URL != "Observation" {
		t.Errorf("entry %d: request %s %s, want POST Observation", i, e.Request.Method, e.Request.URL)
	}
	if q, err := url.ParseQuery(e.Request.IfNoneExist); err != nil || q.Get("identifier") != SystemObservation+"|"+own {
		t.Errorf("entry %d: ifNoneExist %q, want identifier=%s|%s", i, e.Request.IfNoneExist, SystemObservation, own)
	}
	if get(o, "identifier", 0, "system") != SystemObservation || get(o, "identifier", 0, "value") != own ||
		get(o, "identifier", 1, "system") != SystemRecord || get(o, "identifier", 1, "value") != m.ID {
		t.Errorf("entry %d: identifiers %v", i, o["identifier"])
	}
	if get(o, "code", "coding", 0, "system") != SystemMDC || get(o, "code", "coding", 0, "code") != w.mdc {
		t.Errorf("entry %d: code %v, want MDC %s first", i, o["code"], w.mdc)
	}
	for j, l := range w.loinc {
		if get(o, "code", "coding", 1+j, "system") != SystemLOINC || get(o, "code", "coding", 1+j, "code") != l {
			t.Errorf("entry %d: coding %d %v, want LOINC %s", i, 1+j, get(o, "code", "coding", 1+j), l)
		}
	}
	if get(o, "category", 0, "coding", 0, "code") != "vital-signs" {
		t.Errorf("entry %d: category %v", i, o["category"])
	}
	if o["effectiveDateTime"] != "2026-01-01T00:59:00.123Z" {
		t.Errorf("entry %d: effectiveDateTime %v", i, o["effectiveDateTime"])
	}
	if get(o, "subject", "reference") != "Patient/p-17" || get(o, "device", "reference") != d.Entry[0].FullURL {
		t.Errorf("entry %d: subject %v device %v", i, o["subject"], o["device"])
	}
	if w.value != "" {
		q := o["valueQuantity"]
		if get(q, "value") != json.Number(w.value) || get(q, "code") != w.unit || get(q, "system") != SystemUCUM {
			t.Errorf("entry %d: valueQuantity %v, want %s %s (UCUM)", i, q, w.value, w.unit)
		}
	}
	for j := 0; j < len(w.comps); j += 2 {
		c := get(o, "component", j/2)
		if get(c, "code", "coding", 0, "code") != w.comps[j] || get(c, "valueQuantity", "value") != json.Number(w.comps[j+1]) ||
			get(c, "valueQuantity", "code") != "mm[Hg]" {
			t.Errorf("entry %d: component %d %v, want %s = %s mm[Hg]", i, j/2, c, w.comps[j], w.comps[j+1])
		}
	}
	if len(w.comps) > 0 && o["valueQuantity"] != nil {
		t.Errorf("entry %d: a compound Observation has a value of its own", i)
	}
}

func checkProvenance(t *testing.T, d decoded, p map[string]any, m *wire.Message, nObs int) {
	t.Helper()
	last := d.Entry[len(d.Entry)-1]
	if p["resourceType"] != "Provenance" || last.Request.Method != "PUT" || last.Request.URL != "Provenance/"+ProvenanceID(m.ID) ||
		p["id"] != ProvenanceID(m.ID) {
		t.Fatalf("last entry: %v %s %s id %v, want the Provenance PUT by its id", p["resourceType"], last.Request.Method, last.Request.URL, p["id"])
	}
	sig := get(p, "signature", 0)
	if get(sig, "sigFormat") != "application/cose" || get(sig, "data") != base64.StdEncoding.EncodeToString(m.Sig) {
		t.Errorf("signature %v, want the COSE_Sign1 in base64", sig)
	}
	if get(sig, "who", "reference") != d.Entry[0].FullURL || get(p, "agent", 0, "who", "reference") != d.Entry[0].FullURL {
		t.Errorf("signature or agent not by the Device: %v", p)
	}
	if get(sig, "when") != "2026-01-01T00:59:00.973Z" || p["recorded"] != "2026-01-01T00:59:00.973Z" {
		t.Errorf("when %v recorded %v, want the gateway's rx", get(sig, "when"), p["recorded"])
	}
	for i := 0; i < nObs; i++ {
		if get(p, "target", i, "reference") != d.Entry[1+i].FullURL {
			t.Errorf("target %d %v, want Observation %s", i, get(p, "target", i), d.Entry[1+i].FullURL)
		}
	}
	if get(p, "target", nObs) != nil {
		t.Errorf("targets %v, want the %d Observations", p["target"], nObs)
	}
}

func TestECGSampledData(t *testing.T) {
	m := signedMessage(t, kindRecords()["ecg"])
	b, err := Bundle(Input{Msg: m})
	if err != nil {
		t.Fatal(err)
	}
	s := get(decode(t, b).Entry[1].Resource, "valueSampledData")
	if get(s, "data") != "0 0.125 -0.5 1.1" || get(s, "period") != json.Number("4") || get(s, "dimensions") != json.Number("1") ||
		get(s, "origin", "value") != json.Number("0") || get(s, "origin", "code") != "mV" {
		t.Errorf("sampled data %v, want the four samples at 4 ms in mV", s)
	}
}

func TestUnverifiedHasNoProvenanceAndNoSubjectWithoutPatient(t *testing.T) {
	m := signedMessage(t, kindRecords()["spo2"])
	b, err := Bundle(Input{Msg: m})
	if err != nil {
		t.Fatal(err)
	}
	d := decode(t, b)
	for _, e := range d.Entry {
		if e.Resource["resourceType"] == "Provenance" {
			t.Error("a Provenance for a record whose signature did not verify")
		}
		if e.Resource["subject"] != nil || e.Resource["patient"] != nil {
			t.Errorf("%v has a patient without a patient mapping", e.Resource["resourceType"])
		}
	}
	if len(d.Entry) != 3 {
		t.Errorf("%d entries, want the Device and two Observations", len(d.Entry))
	}
}

func TestBundleIsDeterministic(t *testing.T) {
	m := signedMessage(t, kindRecords()["bp"])
	a, err1 := Bundle(Input{Msg: m, Verified: true})
	b, err2 := Bundle(Input{Msg: m, Verified: true})
	if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
		t.Fatalf("two bundles of one record differ (%v, %v)", err1, err2)
	}
	m2 := *m
	m2.ID, m2.Rec.Seq = wire.ID(m.Rec.Dev, 43), 43
	c, _ := Bundle(Input{Msg: &m2, Verified: true})
	dc, da := decode(t, c), decode(t, a)
	if dc.Entry[0].FullURL != da.Entry[0].FullURL || dc.Entry[1].FullURL == da.Entry[1].FullURL {
		t.Error("want the same Device fullUrl and different Observation fullUrls for the next record")
	}
}

func TestUnknownCodeIsTextOnly(t *testing.T) {
	rec := telemetry.Record{V: 1, Dev: "dev-9", Seq: 1, TS: tsFixed, Kind: "peakflow",
		Obs: []telemetry.Observation{{Code: "MDC_FLOW_AWAY_EXP_FORCED_PEAK", Val: telemetry.Scalar(410), Unit: "L/min"}}}
	b, err := Bundle(Input{Msg: signedMessage(t, rec)})
	if err != nil {
		t.Fatal(err)
	}
	d := decode(t, b)
	o := d.Entry[1].Resource
	if get(o, "code", "text") != "MDC_FLOW_AWAY_EXP_FORCED_PEAK" || get(o, "code", "coding") != nil {
		t.Errorf("code %v, want the reference ID as text only", o["code"])
	}
	if get(o, "identifier", 0, "value") != "dev-9:1/MDC_FLOW_AWAY_EXP_FORCED_PEAK" {
		t.Errorf("identifier %v", o["identifier"])
	}
	if d.Entry[0].Resource["specialization"] != nil {
		t.Error("an unknown kind has a specialization")
	}
}

func TestBundleRefuses(t *testing.T) {
	good := kindRecords()["spo2"]
	for _, tc := range []struct {
		name    string
		edit    func(*wire.Message)
		patient string
		want    string
	}{
		{"no observations", func(m *wire.Message) { m.Rec.Obs = nil }, "", "without record id"},
		{"code twice", func(m *wire.Message) { m.Rec.Obs = append(m.Rec.Obs, m.Rec.Obs[0]) }, "", "twice"},
		{"no unit", func(m *wire.Message) { m.Rec.Obs[1].Unit = "" }, "", "without code or unit"},
		{"waveform without period", func(m *wire.Message) {
			m.Rec.Obs = []telemetry.Observation{{Code: telemetry.CodeECG, Val: telemetry.Waveform([]float64{1}), Unit: "mV"}}
		}, "", "period_ms"},
		{"time beyond 9999", func(m *wire.Message) { m.Rec.TS = 1 << 62 }, "", "years"},
		{"patient not a reference", func(*wire.Message) {}, "Patient/a b", "patient reference"},
		{"patient of another type", func(*wire.Message) {}, "Practitioner/1", "patient reference"},
		// A hostile record must not steer a conditional update or create:
		// "x,dev-00001" would match (and overwrite) dev-00001's Device.
		{"device with a comma", func(m *wire.Message) { m.Rec.Dev, m.ID = "x,dev-00001", "x,dev-00001:1" }, "", "device ID"},
		{"device with a bar", func(m *wire.Message) { m.Rec.Dev, m.ID = "x|y", "x|y:1" }, "", "device ID"},
		{"device with a slash", func(m *wire.Message) { m.Rec.Dev, m.ID = "a/b", "a/b:1" }, "", "device ID"},
		{"id not dev:seq", func(m *wire.Message) { m.ID = m.Rec.Dev + ":1,dev-00001:2" }, "", "record id"},
		{"code with a comma", func(m *wire.Message) { m.Rec.Obs[1].Code = "X,urn:vitalgate:observation|dev-1:1/150456" }, "", "reference ID"},
		{"code with a backslash", func(m *wire.Message) { m.Rec.Obs[1].Code = `X\` }, "", "reference ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := signedMessage(t, good)
			m.Rec.Obs = slices.Clone(m.Rec.Obs) // good's stay as they are
			tc.edit(m)
			_, err := Bundle(Input{Msg: m, Patient: tc.patient})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %v, want one about %q", err, tc.want)
			}
		})
	}
	if _, err := Bundle(Input{}); err == nil {
		t.Error("a bundle of no message")
	}
}

func TestSearchValuesEscaped(t *testing.T) {
	for value, want := range map[string]string{
		"dev-1:2/150456": "urn:vitalgate:observation|dev-1:2/150456",
		"a,b":            `urn:vitalgate:observation|a\,b`,
		`a|b\c$d`:        `urn:vitalgate:observation|a\|b\\c\$d`,
	} {
		q, err := url.ParseQuery(query(SystemObservation, value))
		if err != nil {
			t.Fatal(err)
		}
		if got := q.Get("identifier"); got != want {
			t.Errorf("query of %q: identifier=%s, want %s", value, got, want)
		}
	}
}

func TestValidPatient(t *testing.T) {
	for ref, ok := range map[string]bool{
		"Patient/123": true, "Patient/a-b.c": true, "https://fhir.example/r4/Patient/9": true,
		"": false, "Patient/": false, "patient/1": false, "Patient/1/_history/2": false, "Patient/" + strings.Repeat("x", 65): false,
	} {
		if err := ValidPatient(ref); (err == nil) != ok {
			t.Errorf("ValidPatient(%q) = %v, want ok %v", ref, err, ok)
		}
	}
}

func TestDecimal(t *testing.T) {
	for v, want := range map[float64]string{97: "97", 0.1: "0.1", float64(float32(36.6)): "36.6", -0.5: "-0.5",
		1e-7: "0.0000001", 123456789.25: "123456789.25"} {
		if got := decimal(v); string(got) != want {
			t.Errorf("decimal(%v) = %s, want %s", v, got, want)
		}
	}
}
