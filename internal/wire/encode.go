package wire

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/fxamacker/cbor/v2"

	"github.com/vitalgate/vitalgate/internal/telemetry"
)

// cborMessage is a CBOR message as encoded: rec is the device's bytes.
type cborMessage struct {
	V    int             `cbor:"v"`
	ID   string          `cbor:"id"`
	Site string          `cbor:"site"`
	GW   string          `cbor:"gw"`
	RX   int64           `cbor:"rx"`
	Rec  cbor.RawMessage `cbor:"rec"`
	Sig  []byte          `cbor:"sig"`
	// FWBelowMin is present (true) only for a device below its model's
	// minimum firmware.
	FWBelowMin bool `cbor:"fw_below_min,omitempty"`
	// ClockUntrusted is present (true) only for a record accepted while
	// the gateway's clock was untrusted.
	ClockUntrusted bool `cbor:"clock_untrusted,omitempty"`
}

// jsonMessage is a JSON message as encoded.
type jsonMessage struct {
	V    int               `json:"v"`
	ID   string            `json:"id"`
	Site string            `json:"site"`
	GW   string            `json:"gw"`
	RX   int64             `json:"rx"`
	Rec  *telemetry.Record `json:"rec"`
	Sig  []byte            `json:"sig"`
	// FWBelowMin as in cborMessage.
	FWBelowMin bool `json:"fw_below_min,omitempty"`
	// ClockUntrusted as in cborMessage.
	ClockUntrusted bool `json:"clock_untrusted,omitempty"`
}

// cborEnc encodes into the caller's buffer, so a CBOR entry takes one
// allocation for its bytes.
var cborEnc = func() cbor.UserBufferEncMode {
	m, err := cbor.CoreDetEncOptions().UserBufferEncMode()
	if err != nil {
		panic(fmt.Sprintf("wire: message encode mode: %v", err))
	}
	return m
}()

// Entry returns the queue entry of a's cloud message in format f: a [Frame]
// of its topic ([Topic]) and its payload ([Encode]).
func Entry(f Format, a *Accepted) ([]byte, error) {
	return encode(f, Topic(a.Site, a.Rec.Dev, a.Rec.Kind), true, a)
}

// Encode returns a's cloud message in format f: the payload of its [Entry].
// Errors name the message's id; callers add the operation.
func Encode(f Format, a *Accepted) ([]byte, error) {
	return encode(f, "", false, a)
}

// encode is [Entry] when framed (with topic), else [Encode].
func encode(f Format, topic string, framed bool, a *Accepted) ([]byte, error) {
	id := ID(a.Rec.Dev, a.Rec.Seq)
	switch f {
	case "", CBOR:
		// Encoded straight after the topic, into one allocation of about
		// the right size (the map's keys, heads and the rx integer take
		// under 64 bytes).
		n := len(id) + len(a.Site) + len(a.GW) + len(a.Raw) + len(a.Sig) + 64 + 16 + 16 // 16: fw_below_min, 16: clock_untrusted
		if framed {
			n += len(topic) + 1
		}
		buf := bytes.NewBuffer(make([]byte, 0, n))
		if framed {
			buf.WriteString(topic)
			buf.WriteByte(0)
		}
		err := cborEnc.MarshalToBuffer(cborMessage{V: Version, ID: id, Site: a.Site, GW: a.GW, RX: a.RX, Rec: a.Raw, Sig: a.Sig, FWBelowMin: a.FWBelowMin, ClockUntrusted: a.ClockUntrusted}, buf)
		if err != nil {
			return nil, fmt.Errorf("message %s as cbor: %w", id, err)
		}
		return buf.Bytes(), nil
	case JSON:
		payload, err := json.Marshal(jsonMessage{V: Version, ID: id, Site: a.Site, GW: a.GW, RX: a.RX, Rec: a.Rec, Sig: a.Sig, FWBelowMin: a.FWBelowMin, ClockUntrusted: a.ClockUntrusted})
		if err != nil {
			return nil, fmt.Errorf("message %s as json: %w", id, err)
		}
		if !framed {
			return payload, nil
		}
		return Frame(topic, payload), nil
	}
	return nil, fmt.Errorf("message %s: format %q: want cbor or json", id, f)
}
