// Package fhir maps a relayed record (a cloud message, [wire.Message]) to
// an HL7 FHIR R4 transaction Bundle in JSON, following the Personal Health
// Device (PHD) implementation guide. It has one function, [Bundle]; the
// exporter that consumes telemetry and publishes or posts the bundles is
// internal/fhirexport.
//
// # The bundle
//
// A Bundle of type transaction holds, in order:
//
//   - the Device, PUT by its identifier (a conditional update:
//     `Device?identifier=urn:vitalgate:device|{dev}`), with the record
//     kind's IEEE 11073-20601 specialisation and the patient when known;
//   - one Observation per numeric value (PhdNumericObservation): SpO2, pulse
//     rate, temperature, glucose, body weight; the systolic, diastolic and
//     mean pressures of a blood-pressure record together as ONE
//     Observation with three components (PhdCompoundNumericObservation);
//     and each waveform, such as the ECG, as SampledData
//     (PhdRtsaObservation). Each is a conditional create, `ifNoneExist:
//     identifier=urn:vitalgate:observation|{record id}/{MDC code}`, so a
//     record exported twice, by a redelivery or by a second exporter, still
//     makes one Observation per value;
//   - when the device's signature verified end to end, a Provenance (PUT
//     with an id derived from the record id) whose signature is the
//     device's COSE_Sign1 in base64, sigFormat application/cose, signed by
//     the Device, targeting the Observations.
//
// Every Observation is coded with the numeric IEEE 11073-10101 code
// (system urn:iso:std:iso:11073:10101, the reference ID as display) and the
// LOINC vital-signs code where there is one, has category vital-signs,
// status final, a UCUM quantity, effectiveDateTime from the record's ts
// (RFC 3339 with milliseconds, UTC), the Device and, when the site maps the
// device to one, the Patient as subject. It carries two identifiers: its
// own (system [SystemObservation]) and the record's (system
// [SystemRecord], value the record id).
//
// Every fullUrl is a urn:uuid derived from the record id (or, for the
// Device, the device ID), so the same record always gives the same bytes.
package fhir

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// Input is what [Bundle] maps: one cloud message and what the consumer
// found out about it.
type Input struct {
	// Msg is the decoded cloud message; its record is what is exported.
	Msg *wire.Message
	// Verified: the device's signature over Msg.Rec verified end to end
	// (the consumer checked Msg.Sig with the device's certificate and found
	// Msg.Rec to be the signed record). Only then is a Provenance written.
	Verified bool
	// Patient is the reference of the device's patient, "Patient/{id}" or
	// an absolute URL ending in "/Patient/{id}"; "" writes no subject.
	Patient string
}

// patientRef is a Patient reference the bundles accept (see [ValidPatient]).
var patientRef = regexp.MustCompile(`^(https?://[^\s|?#]+/)?Patient/[A-Za-z0-9\-.]{1,64}$`)

// ValidPatient checks a patient reference as [Input].Patient takes it:
// "Patient/{id}" (id of FHIR's id alphabet, at most 64 characters), or an
// absolute http(s) URL ending in "/Patient/{id}".
func ValidPatient(ref string) error {
	if !patientRef.MatchString(ref) {
		return fmt.Errorf("patient reference %q is not Patient/{id} or a URL ending in /Patient/{id}", ref)
	}
	return nil
}

// Bundle returns the transaction Bundle of in (see the package
// documentation) as JSON. It fails on a message it cannot map: no record,
// a device ID outside the alphabet of device IDs, a record id that is not
// {dev}:{seq}, a measurement time outside the years 1 to 9999, an
// observation without code or unit or with a code outside [validCode], a
// code twice in one record, a waveform without its period, or an invalid
// patient reference.
func Bundle(in Input) ([]byte, error) {
	m := in.Msg
	if m == nil || m.ID == "" || m.Rec.Dev == "" || len(m.Rec.Obs) == 0 {
		return nil, errors.New("fhir: message without record id, device or observations")
	}
	// The device ID and the record id end up in identifiers, search URLs
	// and the fhir/ topic: a ',' or '|' there would change what a
	// conditional update or create matches (another device's Device).
	if !pki.ValidDeviceID(m.Rec.Dev) {
		return nil, fmt.Errorf("fhir: device ID %q is not of letters, digits, '.', '_' and '-' (at most 64)", clip(m.Rec.Dev))
	}
	if m.ID != wire.ID(m.Rec.Dev, m.Rec.Seq) {
		return nil, fmt.Errorf("fhir: record id %q is not {dev}:{seq}", clip(m.ID))
	}
	if in.Patient != "" {
		if err := ValidPatient(in.Patient); err != nil {
			return nil, fmt.Errorf("fhir: %w", err)
		}
	}
	when, err := dateTime(m.Rec.TS)
	if err != nil {
		return nil, err
	}
	devURL := uuidURN("device/" + m.Rec.Dev)
	b := &bundle{ResourceType: "Bundle", Type: "transaction"}
	b.Entry = append(b.Entry, deviceEntry(m, devURL, in.Patient))
	obs, err := observations(m, when, devURL, in.Patient)
	if err != nil {
		return nil, err
	}
	b.Entry = append(b.Entry, obs...)
	if in.Verified {
		p, err := provenanceEntry(m, devURL, obs)
		if err != nil {
			return nil, err
		}
		b.Entry = append(b.Entry, p)
	}
	out, err := json.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("fhir: encode bundle: %w", err)
	}
	return out, nil
}

// deviceEntry is the Device, PUT by its identifier.
func deviceEntry(m *wire.Message, fullURL, patient string) entry {
	d := &device{ResourceType: "Device",
		Identifier: []identifier{{System: SystemDevice, Value: m.Rec.Dev}},
		DeviceName: []deviceName{{Name: m.Rec.Dev, Type: "user-friendly-name"}},
	}
	if c, ok := deviceTypes[m.Rec.Kind]; ok {
		d.Specialization = []specialization{{SystemType: codeableConcept{Coding: []coding{c}}}}
	}
	if patient != "" {
		d.Patient = &reference{Reference: patient}
	}
	return entry{FullURL: fullURL, Resource: d,
		Request: &request{Method: "PUT", URL: "Device?" + query(SystemDevice, m.Rec.Dev)}}
}

// observations maps the record's observations: one per value, the blood
// pressures together as one with components.
func observations(m *wire.Message, when, devURL, patient string) ([]entry, error) {
	var out []entry
	seen := map[string]bool{}
	bp := -1 // index in out of the blood-pressure Observation
	for _, o := range m.Rec.Obs {
		if o.Code == "" || o.Unit == "" {
			return nil, fmt.Errorf("fhir: record %s: an observation without code or unit", m.ID)
		}
		if !validCode(o.Code) {
			return nil, fmt.Errorf("fhir: record %s: code %q is not a reference ID (letters, digits, '_', '.' and '-', at most 64)", m.ID, clip(o.Code))
		}
		if seen[o.Code] {
			return nil, fmt.Errorf("fhir: record %s has %s twice", m.ID, o.Code)
		}
		seen[o.Code] = true
		if bpParts[o.Code] && !o.Val.IsWaveform() {
			if bp < 0 {
				bp = len(out)
				out = append(out, newObservation(m, codeBP, ProfileCompound, when, devURL, patient))
			}
			ob := out[bp].Resource.(*observation)
			ob.Component = append(ob.Component, component{Code: codeOf(o.Code), ValueQuantity: ucum(o.Val.Num, o.Unit)})
			continue
		}
		if o.Val.IsWaveform() {
			if o.PeriodMS == nil {
				return nil, fmt.Errorf("fhir: record %s: waveform %s without period_ms", m.ID, o.Code)
			}
			e := newObservation(m, o.Code, ProfileRtsa, when, devURL, patient)
			e.Resource.(*observation).ValueSampledData = sampled(o.Val.Samples, *o.PeriodMS, o.Unit)
			out = append(out, e)
			continue
		}
		e := newObservation(m, o.Code, ProfileNumeric, when, devURL, patient)
		e.Resource.(*observation).ValueQuantity = ucum(o.Val.Num, o.Unit)
		out = append(out, e)
	}
	return out, nil
}

// newObservation is the entry of an Observation of code without its value:
// a conditional create on its identifier.
func newObservation(m *wire.Message, code, profile, when, devURL, patient string) entry {
	own := m.ID + "/" + idSuffix(code)
	o := &observation{ResourceType: "Observation",
		Meta:       &meta{Profile: []string{profile}},
		Identifier: []identifier{{System: SystemObservation, Value: own}, {System: SystemRecord, Value: m.ID}},
		Status:     "final",
		Category: []codeableConcept{{Coding: []coding{{System: systemCategory, Code: "vital-signs",
			Display: "Vital Signs"}}}},
		Code:              codeOf(code),
		EffectiveDateTime: when,
		Device:            &reference{Reference: devURL},
	}
	if patient != "" {
		o.Subject = &reference{Reference: patient}
	}
	return entry{FullURL: uuidURN("observation/" + own), Resource: o,
		Request: &request{Method: "POST", URL: "Observation", IfNoneExist: query(SystemObservation, own)}}
}

// provenanceEntry is the Provenance of a verified record: the device's
// COSE_Sign1 as the signature over the record, by the Device.
func provenanceEntry(m *wire.Message, devURL string, obs []entry) (entry, error) {
	if len(m.Sig) == 0 {
		return entry{}, fmt.Errorf("fhir: record %s verified but without sig", m.ID)
	}
	recorded, err := dateTime(m.RX)
	if err != nil {
		return entry{}, fmt.Errorf("fhir: rx: %w", err)
	}
	p := &provenance{ResourceType: "Provenance", ID: ProvenanceID(m.ID), Recorded: recorded,
		Agent: []provenanceAgent{{
			Type: &codeableConcept{Coding: []coding{{System: "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
				Code: "author", Display: "Author"}}},
			Who: reference{Reference: devURL}}},
		Signature: []signature{{
			Type:      []coding{{System: systemSigType, Code: "1.2.840.10065.1.12.1.1", Display: "Author's Signature"}},
			When:      recorded,
			Who:       reference{Reference: devURL},
			SigFormat: "application/cose",
			Data:      base64.StdEncoding.EncodeToString(m.Sig),
		}},
	}
	for _, o := range obs {
		p.Target = append(p.Target, reference{Reference: o.FullURL})
	}
	return entry{FullURL: uuidURN("provenance/" + m.ID), Resource: p,
		Request: &request{Method: "PUT", URL: "Provenance/" + p.ID}}, nil
}

// ProvenanceID is the id of a record's Provenance: "vg-" and 32 hex digits
// of the SHA-256 of the record id (a record id may hold characters a FHIR
// id may not).
func ProvenanceID(recordID string) string {
	sum := sha256.Sum256([]byte("vitalgate/provenance/" + recordID))
	return "vg-" + hex.EncodeToString(sum[:16])
}

// ucum is a UCUM quantity; the record's unit is a UCUM code.
func ucum(v float64, unit string) *quantity {
	return &quantity{Value: decimal(v), Unit: unit, System: SystemUCUM, Code: unit}
}

// sampled is a waveform as SampledData: origin 0 in the unit, the period in
// milliseconds, one dimension, the samples as decimals separated by spaces.
func sampled(samples []float64, periodMS uint64, unit string) *sampledData {
	s := make([]string, len(samples))
	for i, v := range samples {
		s[i] = string(decimal(v))
	}
	return &sampledData{Origin: quantity{Value: "0", Unit: unit, System: SystemUCUM, Code: unit},
		Period: json.Number(strconv.FormatUint(periodMS, 10)), Dimensions: 1, Data: strings.Join(s, " ")}
}

// decimal writes v as the shortest plain decimal that reads back as v; a
// value that a float32 holds exactly (devices often send float32) is
// written as the shortest that reads back as that float32, so 36.6 sent as
// a float32 is 36.6, not 36.599998474121094.
func decimal(v float64) json.Number {
	bits := 64
	if float64(float32(v)) == v {
		bits = 32
	}
	return json.Number(strconv.FormatFloat(v, 'f', -1, bits))
}

// dateTime is a Unix millisecond time as a FHIR dateTime/instant: RFC 3339
// in UTC with milliseconds.
func dateTime(ms int64) (string, error) {
	t := time.UnixMilli(ms).UTC()
	if t.Year() < 1 || t.Year() > 9999 {
		return "", fmt.Errorf("fhir: time %d ms is outside the years 1 to 9999", ms)
	}
	return t.Format("2006-01-02T15:04:05.000Z"), nil
}

// query is the search `identifier={system}|{value}`, URL-encoded, with
// the characters that FHIR search gives a meaning (backslash, '|', ',' and '$')
// escaped in the value.
func query(system, value string) string {
	return url.Values{"identifier": {system + "|" + searchEscaper.Replace(value)}}.Encode()
}

// searchEscaper escapes a token's value in a FHIR search parameter.
var searchEscaper = strings.NewReplacer(`\`, `\\`, `|`, `\|`, `,`, `\,`, `$`, `\$`)

// validCode: an observation's reference ID, as the record schemas name
// them (MDC_PULS_OXIM_SAT_O2): 1 to 64 letters, digits, '_', '.' and '-'.
// It becomes part of an identifier and of a search URL.
func validCode(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// clip shortens a peer's string for an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// uuidURN is a name-based (version 5 layout) UUID of name, as a urn:uuid.
func uuidURN(name string) string {
	sum := sha256.Sum256([]byte("vitalgate/" + name))
	u := sum[:16]
	u[6] = u[6]&0x0f | 0x50
	u[8] = u[8]&0x3f | 0x80
	h := hex.EncodeToString(u)
	return "urn:uuid:" + h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
