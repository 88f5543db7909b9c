package fhir

import (
	"encoding/json"
	"testing"

	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// FuzzBundle maps every record that decodes strictly (as the gateway
// decodes it) to a Bundle, or to an error: never a panic, and every
// Bundle is JSON that Google's R4 parser accepts.
func FuzzBundle(f *testing.F) {
	for _, rec := range kindRecords() {
		b, err := telemetry.Encode(&rec)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, true, "Patient/p-1")
	}
	f.Add([]byte{0xa0}, false, "")
	f.Fuzz(func(t *testing.T, raw []byte, verified bool, patient string) {
		rec, err := telemetry.Decode(raw)
		if err != nil {
			return
		}
		m := &wire.Message{V: 1, ID: wire.ID(rec.Dev, rec.Seq), Site: "site1", GW: "gw1", RX: rec.TS, Rec: *rec, Sig: raw}
		b, err := Bundle(Input{Msg: m, Verified: verified, Patient: patient})
		if err != nil {
			return
		}
		if !json.Valid(b) {
			t.Fatalf("not JSON: %s", b)
		}
		if rec.Dev == "" || !validFHIRString(rec.Dev) || !validFHIRString(rec.Kind) {
			return // FHIR strings may not be empty or hold control characters: the gateway's IDs never do
		}
		if err := gofhirCheck(t, b); err != nil {
			t.Fatalf("R4 parser refused: %v\n%s", err, b)
		}
	})
}

// validFHIRString: FHIR's string type (1 or more characters, no control
// characters other than whitespace).
func validFHIRString(s string) bool {
	for _, r := range s {
		if r < 0x20 && r != '\t' && r != '\n' && r != '\r' {
			return false
		}
	}
	return s != ""
}
