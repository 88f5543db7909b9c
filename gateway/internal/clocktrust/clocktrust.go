// Package clocktrust tells whether the gateway's clock can be trusted to
// judge the time of devices' records. A box in a patient's home may boot
// with a clock far in the past (no battery-backed clock), or at the time it
// was last shut down until NTP corrects it; judged by such a clock, a
// household's records would be rejected as future or stale and lost.
//
// The clock is trusted when
//
//   - it is not behind the floor: the newest notBefore of the PKI
//     directory's certificates, or the time the gateway last saw while the
//     kernel said its clock was synchronised (DATA/clock-floor), whichever
//     is later; a clock behind it is wrong;
//   - it is not more than max_ahead past the floor, unless the kernel says
//     it is synchronised (a box may stay unplugged in a cupboard for a
//     year; a synchronised clock after that is right, a free-running one
//     that far ahead is not believed);
//   - with require_sync true, the kernel says it is synchronised
//     (adjtimex(2): a state other than TIME_ERROR, STA_UNSYNC clear).
//
// require_sync auto (the default) uses the kernel's state where it is
// known, as above, without requiring it: a box without an NTP client is
// judged by its floor. false ignores the kernel's state; the floor is then
// only what the certificates say.
//
// While the clock is untrusted the gateway does not judge records' ts as
// future or stale: it stores them and marks their cloud messages
// clock_untrusted, so consumers know the gateway could not check them.
package clocktrust

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vitalgate/vitalgate/internal/atomicfile"
)

// FloorFile is the file under the data directory that keeps the floor: the
// latest time seen while the kernel said the clock was synchronised.
const FloorFile = "clock-floor"

// DefaultMaxAhead is how far past its floor an unsynchronised clock is
// believed by default: a year and a day (366 days).
const DefaultMaxAhead = 8784 * time.Hour

// The values of require_sync.
const (
	Auto    = "auto"  // the kernel's state counts where it is known; not required
	Require = "true"  // only a clock the kernel says is synchronised is trusted
	Ignore  = "false" // the kernel's state is not asked: the floor alone
)

// Modes are the accepted values of require_sync.
var Modes = []string{Auto, Require, Ignore}

// FloorStep is how often, at most, the floor file is rewritten while the
// clock is synchronised (a box's flash storage is not written every few
// seconds for this).
const FloorStep = time.Hour

// Options configure a [Clock].
type Options struct {
	PKI         string        // directory whose *.crt files' notBefore make part of the floor
	Data        string        // directory of the floor file; "" keeps no floor file
	RequireSync string        // Auto ("" too), Require or Ignore
	MaxAhead    time.Duration // [DefaultMaxAhead] if <= 0
	Now         func() time.Time
	// Kernel reports whether the kernel's clock is synchronised; default
	// [KernelSynced]. An error means the state is unknown: not synchronised.
	Kernel func() (bool, error)
	// OnChange is told of each change of trust, and of an untrusted clock
	// at the first check; it runs on the checking goroutine.
	OnChange func(State)
	Log      *slog.Logger
}

// State is the outcome of one check of the clock.
type State struct {
	Trusted bool
	Synced  bool      // the kernel said the clock was synchronised (never with require_sync false)
	Now     time.Time // the clock's time at the check
	Floor   time.Time
	Reason  string // why the clock is untrusted; "" when trusted
}

// Clock holds the floor and the last judgement of the clock.
type Clock struct {
	o       Options
	mu      sync.Mutex // one check at a time
	floor   time.Time
	written time.Time // the floor file's last write by this process
	state   atomic.Pointer[State]
}

// New reads the floor and checks the clock once.
func New(o Options) (*Clock, error) {
	if o.RequireSync == "" {
		o.RequireSync = Auto
	}
	if !validMode(o.RequireSync) {
		return nil, fmt.Errorf("clock.require_sync: %q is not %s", o.RequireSync, strings.Join(Modes, ", "))
	}
	if o.MaxAhead <= 0 {
		o.MaxAhead = DefaultMaxAhead
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Kernel == nil {
		o.Kernel = KernelSynced
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	c := &Clock{o: o}
	certs, err := CertFloor(o.PKI)
	if err != nil {
		return nil, err
	}
	c.floor = certs
	if o.Data != "" {
		saved, err := readFloor(filepath.Join(o.Data, FloorFile))
		if err != nil {
			// The floor file is the gateway's own; a damaged one costs only
			// its part of the floor, and is rewritten at the next sync.
			o.Log.Warn("clock floor file ignored", "error", err)
		}
		if saved.After(c.floor) {
			c.floor = saved
		}
	}
	c.Check()
	return c, nil
}

func validMode(m string) bool {
	for _, v := range Modes {
		if m == v {
			return true
		}
	}
	return false
}

// Trusted reports the last judgement: whether records' ts can be judged by
// the clock. It is cheap (the message path asks it for every record).
func (c *Clock) Trusted() bool { return c.state.Load().Trusted }

// State is the last judgement.
func (c *Clock) State() State { return *c.state.Load() }

// Check judges the clock now, moves the floor up while the kernel says the
// clock is synchronised, and tells OnChange of a change.
func (c *Clock) Check() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.o.Now()
	synced := false
	if c.o.RequireSync != Ignore {
		ok, err := c.o.Kernel()
		synced = ok && err == nil
	}
	st := State{Synced: synced, Now: now, Floor: c.floor}
	st.Reason = Judge(now, c.floor, synced, c.o.RequireSync, c.o.MaxAhead)
	st.Trusted = st.Reason == ""
	if st.Trusted && synced {
		c.raiseFloor(now)
	}
	prev := c.state.Swap(&st)
	if c.o.OnChange != nil && (prev == nil && !st.Trusted || prev != nil && prev.Trusted != st.Trusted) {
		c.o.OnChange(st)
	}
	return st
}

// Judge is the rule: why a clock reading now is untrusted, given its floor,
// whether the kernel says it is synchronised and require_sync; "" when it
// is trusted.
func Judge(now, floor time.Time, synced bool, mode string, maxAhead time.Duration) string {
	switch {
	case now.Before(floor):
		return fmt.Sprintf("clock %s is behind its floor %s (newest certificate or last synchronised time)",
			stamp(now), stamp(floor))
	case mode == Require && !synced:
		return "the kernel does not report the clock synchronised (clock.require_sync: true)"
	case !synced && now.Sub(floor) > maxAhead:
		return fmt.Sprintf("clock %s is more than %s past its floor %s and not synchronised",
			stamp(now), maxAhead, stamp(floor))
	}
	return ""
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// raiseFloor moves the floor to now and keeps it in the floor file, at most
// once per [FloorStep] (and at the first synchronised check).
func (c *Clock) raiseFloor(now time.Time) {
	if now.After(c.floor) {
		c.floor = now
	}
	if c.o.Data == "" || (!c.written.IsZero() && now.Sub(c.written) < FloorStep && !now.Before(c.written)) {
		return
	}
	path := filepath.Join(c.o.Data, FloorFile)
	b := []byte(c.floor.UTC().Format(time.RFC3339Nano) + "\n")
	if err := atomicfile.Write("write clock floor", path, b, 0o600, true); err != nil {
		c.o.Log.Warn("clock floor not saved", "error", err)
		return
	}
	c.written = now
}

// Run checks the clock every interval until ctx ends.
func (c *Clock) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.Check()
		}
	}
}

// CertFloor is the newest notBefore of the certificates in the *.crt files
// of dir (every CERTIFICATE block of each); the zero time if there are none.
// A file that is not PEM certificates is skipped: the PKI's own checks
// report it.
func CertFloor(dir string) (time.Time, error) {
	var floor time.Time
	if dir == "" {
		return floor, nil
	}
	paths, err := filepath.Glob(filepath.Join(dir, "*.crt"))
	if err != nil {
		return floor, fmt.Errorf("clock floor: %w", err)
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for blk, rest := pem.Decode(b); blk != nil; blk, rest = pem.Decode(rest) {
			if blk.Type != "CERTIFICATE" {
				continue
			}
			if c, err := x509.ParseCertificate(blk.Bytes); err == nil && c.NotBefore.After(floor) {
				floor = c.NotBefore
			}
		}
	}
	return floor, nil
}

// readFloor reads the floor file: one RFC 3339 time; the zero time if
// there is none.
func readFloor(path string) (time.Time, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("read clock floor %s: %w", path, err)
	}
	if len(b) > 100 {
		return time.Time{}, fmt.Errorf("clock floor %s: %d bytes, not one time", path, len(b))
	}
	t, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(string(b)))
	if err != nil {
		return time.Time{}, fmt.Errorf("clock floor %s: %w", path, err)
	}
	return t, nil
}
