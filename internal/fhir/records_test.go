package fhir

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"

	"github.com/vitalgate/vitalgate/internal/fleet"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// tsFixed is 2026-01-01T00:59:00.123Z in Unix milliseconds.
const tsFixed = 1767229140123

func period(ms uint64) *uint64 { return &ms }

// kindRecords are one record of each kind of the default schemas, as a
// device sends it.
func kindRecords() map[string]telemetry.Record {
	bat := uint8(80)
	rec := func(kind string, obs ...telemetry.Observation) telemetry.Record {
		return telemetry.Record{V: 1, Dev: "dev-00001", Seq: 42, TS: tsFixed, Kind: kind, Obs: obs, Bat: &bat}
	}
	return map[string]telemetry.Record{
		"spo2": rec("spo2",
			telemetry.Observation{Code: telemetry.CodeSpO2, Val: telemetry.Scalar(97), Unit: "%"},
			telemetry.Observation{Code: telemetry.CodeSpO2Pulse, Val: telemetry.Scalar(72), Unit: "/min"}),
		"bp": rec("bp",
			telemetry.Observation{Code: telemetry.CodeSys, Val: telemetry.Scalar(128), Unit: "mm[Hg]"},
			telemetry.Observation{Code: telemetry.CodeDia, Val: telemetry.Scalar(82), Unit: "mm[Hg]"},
			telemetry.Observation{Code: telemetry.CodeMean, Val: telemetry.Scalar(97.3), Unit: "mm[Hg]"},
			telemetry.Observation{Code: telemetry.CodeBPPulse, Val: telemetry.Scalar(66), Unit: "/min"}),
		"glucose": rec("glucose",
			telemetry.Observation{Code: telemetry.CodeGlucose, Val: telemetry.Scalar(104), Unit: "mg/dL"}),
		"temp": rec("temp",
			telemetry.Observation{Code: telemetry.CodeTemp, Val: telemetry.Scalar(float64(float32(36.6))), Unit: "Cel"}),
		"weight": rec("weight",
			telemetry.Observation{Code: telemetry.CodeWeight, Val: telemetry.Scalar(71.25), Unit: "kg"}),
		"ecg": rec("ecg",
			telemetry.Observation{Code: telemetry.CodeECG, Val: telemetry.Waveform([]float64{0, 0.125, -0.5, float64(float32(1.1))}),
				Unit: "mV", PeriodMS: period(4)}),
	}
}

// signedMessage wraps rec in a cloud message whose sig is a real
// COSE_Sign1 of it.
func signedMessage(t testing.TB, rec telemetry.Record) *wire.Message {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := fleet.SignRecord(key, rec.Dev, &rec)
	if err != nil {
		t.Fatal(err)
	}
	return &wire.Message{V: wire.Version, ID: wire.ID(rec.Dev, rec.Seq), Site: "site1", GW: "gw1",
		RX: rec.TS + 850, Rec: rec, Sig: sig}
}

// simulated returns a record of every kind from the simulated fleet, the
// values a real run sends.
func simulated(t testing.TB) []telemetry.Record {
	t.Helper()
	var out []telemetry.Record
	for i, kind := range []string{"spo2", "bp", "glucose", "temp", "weight", "ecg"} {
		d, err := fleet.NewDevice("sim-0000"+string(rune('1'+i)), kind, 7)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d.Next())
	}
	return out
}
