package clocktrust

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// fakeClock is an injected clock and kernel state.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	synced bool
	err    error
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeClock) Kernel() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.synced, f.err
}

func (f *fakeClock) set(now time.Time, synced bool) {
	f.mu.Lock()
	f.now, f.synced = now, synced
	f.mu.Unlock()
}

func newPKI(t *testing.T) (string, time.Time) {
	t.Helper()
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{Site: "s", GatewayID: "gw"}); err != nil {
		t.Fatal(err)
	}
	floor, err := CertFloor(dir)
	if err != nil || floor.IsZero() {
		t.Fatalf("CertFloor of a new PKI: %v, %v", floor, err)
	}
	if d := time.Since(floor); d < 0 || d > 48*time.Hour {
		t.Fatalf("CertFloor of a PKI made now: %v (%v ago)", floor, d)
	}
	return dir, floor
}

func TestFarPastFarFutureThenSynced(t *testing.T) {
	dir, certs := newPKI(t)
	data := t.TempDir()
	f := &fakeClock{now: time.Date(1970, 1, 1, 0, 0, 42, 0, time.UTC)} // a box without a real-time clock
	var changes []State
	c, err := New(Options{PKI: dir, Data: data, Now: f.Now, Kernel: f.Kernel,
		OnChange: func(s State) { changes = append(changes, s) }})
	if err != nil {
		t.Fatal(err)
	}
	st := c.State()
	if c.Trusted() || !strings.Contains(st.Reason, "behind its floor") || !st.Floor.Equal(certs) {
		t.Fatalf("1970 at boot: %+v", st)
	}
	if len(changes) != 1 || changes[0].Trusted {
		t.Fatalf("an untrusted clock at the first check is a change: %+v", changes)
	}

	f.set(certs.Add(3*DefaultMaxAhead), false) // a free-running clock three years on
	if st := c.Check(); st.Trusted || !strings.Contains(st.Reason, "more than 8784h0m0s past its floor") {
		t.Fatalf("far future: %+v", st)
	}
	if len(changes) != 1 {
		t.Fatalf("untrusted to untrusted is no change: %d changes", len(changes))
	}
	if _, err := os.Stat(filepath.Join(data, FloorFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("floor file written while not synchronised: %v", err)
	}

	// NTP sets the clock: synchronised and ahead of the floor, even far
	// ahead (the box sat unplugged), is trusted, and the floor moves up.
	synced := certs.Add(2 * DefaultMaxAhead)
	f.set(synced, true)
	if st := c.Check(); !st.Trusted || !st.Synced || st.Reason != "" {
		t.Fatalf("synchronised: %+v", st)
	}
	if len(changes) != 2 || !changes[1].Trusted {
		t.Fatalf("the change to trusted is told: %+v", changes)
	}
	b, err := os.ReadFile(filepath.Join(data, FloorFile))
	if err != nil || strings.TrimSpace(string(b)) != synced.UTC().Format(time.RFC3339Nano) {
		t.Fatalf("floor file %q, %v", b, err)
	}

	// After a restart that boots at the old time again, the saved floor
	// (not just the certificates) shows the clock is behind.
	f.set(certs.Add(time.Hour), false)
	c2, err := New(Options{PKI: dir, Data: data, Now: f.Now, Kernel: f.Kernel})
	if err != nil {
		t.Fatal(err)
	}
	if st := c2.State(); st.Trusted || !st.Floor.Equal(synced) {
		t.Fatalf("after a restart behind the saved floor: %+v", st)
	}
}

func TestRequireSync(t *testing.T) {
	dir, certs := newPKI(t)
	f := &fakeClock{now: certs.Add(time.Hour)}
	for _, tc := range []struct {
		mode   string
		synced bool
		err    error
		want   bool
	}{
		{Auto, false, nil, true},
		{Auto, true, nil, true},
		{Auto, false, errors.New("no adjtimex"), true},
		{Require, false, nil, false},
		{Require, true, errors.New("no adjtimex"), false},
		{Require, true, nil, true},
		{Ignore, false, nil, true},
	} {
		f.mu.Lock()
		f.synced, f.err = tc.synced, tc.err
		f.mu.Unlock()
		c, err := New(Options{PKI: dir, RequireSync: tc.mode, Now: f.Now, Kernel: f.Kernel})
		if err != nil {
			t.Fatal(err)
		}
		if st := c.State(); st.Trusted != tc.want {
			t.Errorf("require_sync %s, synced %v, error %v: %+v, want trusted %v", tc.mode, tc.synced, tc.err, st, tc.want)
		}
	}
	// With require_sync false the kernel is not asked: a far-ahead clock
	// stays untrusted even if it were synchronised.
	f.set(certs.Add(2*DefaultMaxAhead), true)
	c, err := New(Options{PKI: dir, RequireSync: Ignore, Now: f.Now, Kernel: f.Kernel})
	if err != nil {
		t.Fatal(err)
	}
	if st := c.State(); st.Trusted || st.Synced {
		t.Errorf("require_sync false, far ahead: %+v", st)
	}
	if _, err := New(Options{PKI: dir, RequireSync: "yes"}); err == nil || !strings.Contains(err.Error(), `"yes" is not auto, true, false`) {
		t.Errorf("bad require_sync: %v", err)
	}
}

func TestMaxAheadConfigured(t *testing.T) {
	dir, certs := newPKI(t)
	f := &fakeClock{now: certs.Add(25 * time.Hour)}
	c, err := New(Options{PKI: dir, MaxAhead: 24 * time.Hour, Now: f.Now, Kernel: f.Kernel})
	if err != nil {
		t.Fatal(err)
	}
	if c.Trusted() {
		t.Fatalf("25h past the floor with max_ahead 24h: %+v", c.State())
	}
}

func TestDamagedFloorFileIgnored(t *testing.T) {
	dir, certs := newPKI(t)
	data := t.TempDir()
	if err := os.WriteFile(filepath.Join(data, FloorFile), []byte("not a time\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := &fakeClock{now: certs.Add(time.Minute), synced: true}
	c, err := New(Options{PKI: dir, Data: data, Now: f.Now, Kernel: f.Kernel})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Trusted() {
		t.Fatalf("a damaged floor file must not make the clock untrusted: %+v", c.State())
	}
	if b, _ := os.ReadFile(filepath.Join(data, FloorFile)); strings.TrimSpace(string(b)) != f.Now().UTC().Format(time.RFC3339Nano) {
		t.Fatalf("damaged floor file not rewritten at the sync: %q", b)
	}
}

func TestKernelSyncedAnswers(t *testing.T) {
	// Whatever this machine's state, the call must answer without a
	// privilege (read-only adjtimex) on Linux.
	synced, err := KernelSynced()
	t.Logf("kernel clock synchronised: %v (%v)", synced, err)
}
