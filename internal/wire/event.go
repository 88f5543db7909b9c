package wire

// Event is a security event: what a gateway publishes on
// security/{site}/{gateway} (QoS 1, never retained, always JSON) and
// appends to its audit log (CBOR there), and what a FHIR exporter
// publishes on security/{site}/{its client ID}. The format is a contract
// with apps: docs/apps.md#security-events.
type Event struct {
	V       int    `json:"v" cbor:"v"`
	TS      int64  `json:"ts" cbor:"ts"`
	GW      string `json:"gw" cbor:"gw"`
	Dev     string `json:"dev,omitempty" cbor:"dev,omitempty"`
	Verdict string `json:"verdict" cbor:"verdict"`
	Detail  string `json:"detail" cbor:"detail"`
	Remote  string `json:"remote" cbor:"remote"`

	// Severity grades a posture finding (verdict "audit"): "low", "medium",
	// "high" or "critical".
	Severity string `json:"severity,omitempty" cbor:"severity,omitempty"`
	// Figure, Baseline and Threshold quantify a behaviour anomaly (verdict
	// "anomaly"): what Metric measured, the device's learned baseline, and
	// the threshold the figure crossed.
	Metric    string   `json:"metric,omitempty" cbor:"metric,omitempty"`
	Figure    *float64 `json:"figure,omitempty" cbor:"figure,omitempty"`
	Baseline  *float64 `json:"baseline,omitempty" cbor:"baseline,omitempty"`
	Threshold *float64 `json:"threshold,omitempty" cbor:"threshold,omitempty"`
}
