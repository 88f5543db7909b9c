package fhir

import "encoding/json"

// The FHIR R4 data types and resources the mapping writes, as typed values
// that encoding/json turns into FHIR JSON: only the elements used here.

type coding struct {
	System  string `json:"system,omitempty"`
	Code    string `json:"code,omitempty"`
	Display string `json:"display,omitempty"`
}

type codeableConcept struct {
	Coding []coding `json:"coding,omitempty"`
	Text   string   `json:"text,omitempty"`
}

type identifier struct {
	System string `json:"system"`
	Value  string `json:"value"`
}

type reference struct {
	Reference string `json:"reference"`
}

type meta struct {
	Profile []string `json:"profile"`
}

// quantity is a UCUM quantity; Value is a FHIR decimal written as the
// shortest decimal that reads back as the device's number.
type quantity struct {
	Value  json.Number `json:"value"`
	Unit   string      `json:"unit"`
	System string      `json:"system"`
	Code   string      `json:"code"`
}

type sampledData struct {
	Origin     quantity    `json:"origin"`
	Period     json.Number `json:"period"`
	Dimensions int         `json:"dimensions"`
	Data       string      `json:"data,omitempty"`
}

type component struct {
	Code          codeableConcept `json:"code"`
	ValueQuantity *quantity       `json:"valueQuantity,omitempty"`
}

type observation struct {
	ResourceType      string            `json:"resourceType"`
	Meta              *meta             `json:"meta,omitempty"`
	Identifier        []identifier      `json:"identifier"`
	Status            string            `json:"status"`
	Category          []codeableConcept `json:"category"`
	Code              codeableConcept   `json:"code"`
	Subject           *reference        `json:"subject,omitempty"`
	EffectiveDateTime string            `json:"effectiveDateTime"`
	ValueQuantity     *quantity         `json:"valueQuantity,omitempty"`
	ValueSampledData  *sampledData      `json:"valueSampledData,omitempty"`
	Device            *reference        `json:"device,omitempty"`
	Component         []component       `json:"component,omitempty"`
}

type deviceName struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

type specialization struct {
	SystemType codeableConcept `json:"systemType"`
}

type device struct {
	ResourceType   string           `json:"resourceType"`
	Identifier     []identifier     `json:"identifier"`
	DeviceName     []deviceName     `json:"deviceName"`
	Specialization []specialization `json:"specialization,omitempty"`
	Patient        *reference       `json:"patient,omitempty"`
}

type signature struct {
	Type      []coding  `json:"type"`
	When      string    `json:"when"`
	Who       reference `json:"who"`
	SigFormat string    `json:"sigFormat"`
	Data      string    `json:"data"`
}

type provenanceAgent struct {
	Type *codeableConcept `json:"type,omitempty"`
	Who  reference        `json:"who"`
}

type provenance struct {
	ResourceType string            `json:"resourceType"`
	ID           string            `json:"id"`
	Target       []reference       `json:"target"`
	Recorded     string            `json:"recorded"`
	Agent        []provenanceAgent `json:"agent"`
	Signature    []signature       `json:"signature"`
}

type request struct {
	Method      string `json:"method"`
	URL         string `json:"url"`
	IfNoneExist string `json:"ifNoneExist,omitempty"`
}

type entry struct {
	FullURL  string   `json:"fullUrl"`
	Resource any      `json:"resource"`
	Request  *request `json:"request"`
}

type bundle struct {
	ResourceType string  `json:"resourceType"`
	Type         string  `json:"type"`
	Entry        []entry `json:"entry"`
}
