package fhir

// Code systems and profiles the resources use.
const (
	// SystemMDC is the IEEE 11073-10101 nomenclature: codes are the numeric
	// MDC codes (partition × 65536 + term code), displays the reference IDs.
	SystemMDC = "urn:iso:std:iso:11073:10101"
	// SystemLOINC is LOINC, for the vital-signs codes beside the MDC ones.
	SystemLOINC = "http://loinc.org"
	// SystemUCUM is UCUM, the system of every unit.
	SystemUCUM = "http://unitsofmeasure.org"
	// SystemDevice identifies a Device by its VitalGate device ID.
	SystemDevice = "urn:vitalgate:device"
	// SystemRecord identifies the resources of one record by the record's id
	// ("{dev}:{seq}").
	SystemRecord = "urn:vitalgate:record"
	// SystemObservation identifies one Observation: "{record id}/{MDC code}".
	SystemObservation = "urn:vitalgate:observation"

	systemCategory = "http://terminology.hl7.org/CodeSystem/observation-category"
	systemSigType  = "urn:iso-astm:E1762-95:2013"

	// The Personal Health Device implementation guide's profiles.
	ProfileNumeric  = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdNumericObservation"
	ProfileCompound = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdCompoundNumericObservation"
	ProfileRtsa     = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdRtsaObservation"
)

// term is what the mapping knows of one IEEE 11073-10101 reference ID: its
// numeric MDC code, and the LOINC vital-signs codes of the same quantity
// (none for a waveform).
type term struct {
	mdc   string
	loinc []coding
}

// terms are the codes of the default record schemas (docs/protocol.md#the-record).
// A deployment's own code that is missing here is exported with the
// reference ID as the code's text and no coding.
var terms = map[string]term{
	"MDC_PULS_OXIM_SAT_O2": {mdc: "150456", loinc: []coding{
		{System: SystemLOINC, Code: "2708-6", Display: "Oxygen saturation in Arterial blood"},
		{System: SystemLOINC, Code: "59408-5", Display: "Oxygen saturation in Arterial blood by Pulse oximetry"}}},
	"MDC_PULS_OXIM_PULS_RATE": {mdc: "149530", loinc: []coding{
		{System: SystemLOINC, Code: "8867-4", Display: "Heart rate"}}},
	"MDC_PRESS_BLD_NONINV": {mdc: "150020", loinc: []coding{
		{System: SystemLOINC, Code: "85354-9", Display: "Blood pressure panel with all children optional"}}},
	"MDC_PRESS_BLD_NONINV_SYS": {mdc: "150021", loinc: []coding{
		{System: SystemLOINC, Code: "8480-6", Display: "Systolic blood pressure"}}},
	"MDC_PRESS_BLD_NONINV_DIA": {mdc: "150022", loinc: []coding{
		{System: SystemLOINC, Code: "8462-4", Display: "Diastolic blood pressure"}}},
	"MDC_PRESS_BLD_NONINV_MEAN": {mdc: "150023", loinc: []coding{
		{System: SystemLOINC, Code: "8478-0", Display: "Mean blood pressure"}}},
	"MDC_PULS_RATE_NON_INV": {mdc: "149546", loinc: []coding{
		{System: SystemLOINC, Code: "8867-4", Display: "Heart rate"}}},
	"MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD": {mdc: "160184", loinc: []coding{
		{System: SystemLOINC, Code: "41653-7", Display: "Glucose [Mass/volume] in Capillary blood by Glucometer"}}},
	"MDC_TEMP_BODY": {mdc: "150364", loinc: []coding{
		{System: SystemLOINC, Code: "8310-5", Display: "Body temperature"}}},
	"MDC_MASS_BODY_ACTUAL": {mdc: "188736", loinc: []coding{
		{System: SystemLOINC, Code: "29463-7", Display: "Body weight"}}},
	"MDC_ECG_ELEC_POTL_II": {mdc: "131330"},
}

// codeBP is the reference ID of the compound blood-pressure Observation
// whose components are the systolic, diastolic and mean pressures.
const codeBP = "MDC_PRESS_BLD_NONINV"

// bpParts are the codes that become components of the one blood-pressure
// Observation of a record.
var bpParts = map[string]bool{
	"MDC_PRESS_BLD_NONINV_SYS":  true,
	"MDC_PRESS_BLD_NONINV_DIA":  true,
	"MDC_PRESS_BLD_NONINV_MEAN": true,
}

// deviceTypes are the IEEE 11073-20601 device specialisations
// (MDC_DEV_SPEC_PROFILE_*) of the record kinds, the Device's
// specialization.
var deviceTypes = map[string]coding{
	"spo2":    {System: SystemMDC, Code: "528388", Display: "MDC_DEV_SPEC_PROFILE_PULS_OXIM"},
	"ecg":     {System: SystemMDC, Code: "528390", Display: "MDC_DEV_SPEC_PROFILE_MIN_ECG"},
	"bp":      {System: SystemMDC, Code: "528391", Display: "MDC_DEV_SPEC_PROFILE_BPM"},
	"temp":    {System: SystemMDC, Code: "528392", Display: "MDC_DEV_SPEC_PROFILE_TEMP"},
	"weight":  {System: SystemMDC, Code: "528399", Display: "MDC_DEV_SPEC_PROFILE_SCALE"},
	"glucose": {System: SystemMDC, Code: "528401", Display: "MDC_DEV_SPEC_PROFILE_GLUCOSE"},
}

// codeOf is the CodeableConcept of a reference ID: the MDC coding, then
// the LOINC ones; a reference ID the mapping does not know gets text only.
func codeOf(refID string) codeableConcept {
	t, ok := terms[refID]
	if !ok {
		return codeableConcept{Text: refID}
	}
	c := codeableConcept{Coding: []coding{{System: SystemMDC, Code: t.mdc, Display: refID}}}
	c.Coding = append(c.Coding, t.loinc...)
	return c
}

// idSuffix names one Observation of a record in its identifier: the
// numeric MDC code, or the reference ID when the mapping does not know it.
func idSuffix(refID string) string {
	if t, ok := terms[refID]; ok {
		return t.mdc
	}
	return refID
}
