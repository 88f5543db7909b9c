package cloud

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/fxamacker/cbor/v2"

	"github.com/vitalgate/vitalgate/internal/telemetry"
)

// MessageVersion is the version of the cloud message format.
const MessageVersion = 1

// MaxMessage bounds a cloud message: the record twice (decoded in rec, signed
// in sig) plus the envelope.
const MaxMessage = 2*telemetry.MaxPayload + 4096

// Message is what a gateway publishes to telemetry/{site}/{dev}/{kind}
// (docs/apps.md#messages): the record as accepted, and the device's original
// COSE_Sign1 so a consumer can check the device signature end to end. ID
// ("{dev}:{seq}") is stable across redelivery: consumers drop duplicates by
// it. As JSON, Sig is base64 (encoding/json's []byte).
type Message struct {
	V    int              `cbor:"v" json:"v"`
	ID   string           `cbor:"id" json:"id"`
	Site string           `cbor:"site" json:"site"`
	GW   string           `cbor:"gw" json:"gw"`
	RX   int64            `cbor:"rx" json:"rx"`
	Rec  telemetry.Record `cbor:"rec" json:"rec"`
	Sig  []byte           `cbor:"sig" json:"sig"`
}

var (
	msgDec cbor.DecMode
	msgEnc cbor.EncMode
)

func init() {
	var err error
	msgDec, err = cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
		MaxNestedLevels:  telemetry.MaxDepth + 2,
		MaxArrayElements: telemetry.MaxSamples,
		MaxMapPairs:      32,
		UTF8:             cbor.UTF8RejectInvalid,
	}.DecMode()
	if err != nil {
		panic(fmt.Sprintf("cloud: message decode mode: %v", err))
	}
	msgEnc, err = cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(fmt.Sprintf("cloud: message encode mode: %v", err))
	}
}

// EncodeMessage encodes m as deterministic CBOR (format "cbor") or JSON
// (format "json").
func EncodeMessage(m *Message, format string) ([]byte, error) {
	switch format {
	case "", "cbor":
		return msgEnc.Marshal(m)
	case "json":
		return json.Marshal(m)
	}
	return nil, fmt.Errorf("message format %q: want cbor or json", format)
}

// DecodeMessage decodes a cloud message, CBOR or JSON (told apart by the
// first byte: '{' never starts a CBOR map). Unknown keys are ignored so the
// envelope can grow; the version must be [MessageVersion]. The record is
// decoded but not checked: compare it with the signed payload (see
// [Message.Sig]) before trusting it.
func DecodeMessage(b []byte) (*Message, error) {
	if len(b) > MaxMessage {
		return nil, fmt.Errorf("message of %d bytes, limit %d", len(b), MaxMessage)
	}
	var m Message
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("decode json message: %w", err)
		}
	} else if err := msgDec.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("decode cbor message: %w", err)
	}
	if m.V != MessageVersion {
		return nil, fmt.Errorf("message version %d, want %d", m.V, MessageVersion)
	}
	if m.ID == "" || len(m.Sig) == 0 {
		return nil, fmt.Errorf("message lacks id or sig")
	}
	return &m, nil
}
