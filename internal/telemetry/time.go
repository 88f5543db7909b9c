package telemetry

import (
	"time"

	"github.com/vitalgate/vitalgate/internal/verdict"
)

// Time window of a record's ts.
const (
	// MaxSkew is how far in the future (gateway clock) a record's ts may be.
	MaxSkew = 5 * time.Minute
	// DefaultMaxAge is how old a record may be by default: home devices
	// buffer while offline.
	DefaultMaxAge = 7 * 24 * time.Hour
)

// CheckTime judges a record's ts (Unix milliseconds) against the gateway
// clock: a [*verdict.Error] Future when ts is more than [MaxSkew] ahead of
// now, Stale when it is older than maxAge ([DefaultMaxAge] if maxAge <= 0).
func CheckTime(ts int64, now time.Time, maxAge time.Duration) error {
	if maxAge <= 0 {
		maxAge = DefaultMaxAge
	}
	nowMS := now.UnixMilli()
	if ts > nowMS+MaxSkew.Milliseconds() {
		return verdict.New(verdict.Future, "ts %d is more than %s ahead of %d", ts, MaxSkew, nowMS)
	}
	if ts < nowMS-maxAge.Milliseconds() {
		return verdict.New(verdict.Stale, "ts %d is older than %s before %d", ts, maxAge, nowMS)
	}
	return nil
}
