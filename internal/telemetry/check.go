package telemetry

import (
	"strings"
	"time"

	"github.com/vitalgate/vitalgate/internal/verdict"
)

// RecordCheck configures [CheckRecord].
type RecordCheck struct {
	// Dev is the identity the record's dev must equal: the device of the
	// connection (its certificate's CN).
	Dev     string
	Now     time.Time     // the gateway clock
	MaxAge  time.Duration // the stale limit ([DefaultMaxAge] if <= 0)
	Schemas *Schemas
	// ClockUntrusted: the gateway cannot trust Now (a wrong clock at
	// boot), so the time check is skipped; the gateway marks what it
	// stores instead.
	ClockUntrusted bool
}

// GatewayChecks are the checks of [CheckRecord] that need the gateway's
// state, run at their places in the order; a nil one is skipped (the test
// vectors have no device history). They are apart from [RecordCheck] so
// that the closures the gateway passes can stay on its stack.
type GatewayChecks struct {
	Replay func(*Record) error // the device's replay window
	Rate   func(*Record) error // the device's message and byte rate
}

// CheckRecord is the record half of a device message's check (the payload
// that the signature check returned), in the order of docs/protocol.md
// section 4: record decoding, identity, replay, time, rate, schema (g, if
// not nil, has the replay and rate checks). It returns the record and nil,
// or the first rejection (a [*verdict.Error], or whatever g's checks
// return), with the record once it is decoded.
// The gateway and the test vectors both judge records with it, so they
// cannot disagree on one that fails several checks.
func CheckRecord(payload []byte, c *RecordCheck, g *GatewayChecks) (*Record, error) {
	r, err := Decode(payload)
	if err != nil {
		return nil, err
	}
	if r.Dev != c.Dev {
		return r, verdict.New(verdict.IdentityMismatch, "record dev %q on connection of %q", shorten(r.Dev, 80), c.Dev)
	}
	if g != nil && g.Replay != nil {
		if err := g.Replay(r); err != nil {
			return r, err
		}
	}
	if err := c.checkTime(r.TS); err != nil {
		return r, err
	}
	if g != nil && g.Rate != nil {
		if err := g.Rate(r); err != nil {
			return r, err
		}
	}
	return r, c.Schemas.Check(r)
}

// shorten keeps a peer-controlled string in a detail short and valid UTF-8
// (the detail quotes it).
func shorten(s string, n int) string {
	if len(s) > n {
		s = s[:n] + "…"
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// checkTime is [CheckTime] unless the clock is untrusted.
func (c *RecordCheck) checkTime(ts int64) error {
	if c.ClockUntrusted {
		return nil
	}
	return CheckTime(ts, c.Now, c.MaxAge)
}
