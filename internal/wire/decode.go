package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"

	"github.com/vitalgate/vitalgate/internal/telemetry"
)

// msgDec decodes CBOR messages strictly and within bounds: no duplicate
// keys, indefinite lengths or tags, and no deeper or longer than a record
// allows.
var msgDec = func() cbor.DecMode {
	m, err := cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
		MaxNestedLevels:  telemetry.MaxDepth + 2,
		MaxArrayElements: telemetry.MaxSamples,
		MaxMapPairs:      32,
		UTF8:             cbor.UTF8RejectInvalid,
	}.DecMode()
	if err != nil {
		panic(fmt.Sprintf("wire: message decode mode: %v", err))
	}
	return m
}()

// Decode decodes a cloud message, CBOR or JSON (told apart by the first
// byte: '{' never starts a CBOR map). Unknown keys are ignored so the
// message can grow; the version must be [Version]. The record is decoded
// but not checked: compare it with the signed payload (see [Message].Sig)
// before trusting it.
func Decode(b []byte) (*Message, error) {
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
	if m.V != Version {
		return nil, fmt.Errorf("message version %d, want %d", m.V, Version)
	}
	if m.ID == "" || len(m.Sig) == 0 {
		return nil, errors.New("message lacks id or sig")
	}
	return &m, nil
}
