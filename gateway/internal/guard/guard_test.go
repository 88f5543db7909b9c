package guard

import (
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newGuard(l Limits) (*Guard, *clock) {
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	g := New(l)
	g.now = c.now
	return g, c
}

func TestMessageRate(t *testing.T) {
	g, c := newGuard(Limits{MessagesPerSecond: 2, MessageBurst: 3})
	for i := 0; i < 3; i++ {
		if !g.Allow("a", 10) {
			t.Fatalf("message %d of the burst refused", i)
		}
	}
	if g.Allow("a", 10) {
		t.Fatal("fourth message inside the burst window allowed")
	}
	if !g.Allow("b", 10) {
		t.Fatal("another device shares a's budget")
	}
	c.t = c.t.Add(500 * time.Millisecond)
	if !g.Allow("a", 10) {
		t.Fatal("budget did not refill")
	}
	if g.Allow("a", 10) {
		t.Fatal("refilled more than the rate")
	}
}

func TestByteRate(t *testing.T) {
	g, c := newGuard(Limits{BytesPerSecond: 1000, ByteBurst: 2000})
	if g.Allow("a", 2001) {
		t.Fatal("a message larger than the byte burst was allowed")
	}
	if !g.Allow("a", 1500) {
		t.Fatal("first message refused")
	}
	if g.Allow("a", 1000) {
		t.Fatal("over the byte budget allowed")
	}
	// The refused byte reservation must not have consumed a message token or bytes.
	c.t = c.t.Add(500 * time.Millisecond)
	if !g.Allow("a", 1000) {
		t.Fatal("budget not refilled after 0.5 s")
	}
}

func TestQuarantine(t *testing.T) {
	g, c := newGuard(Limits{Violations: 3, Window: time.Minute, Cooloff: 10 * time.Minute})
	for i := 1; i <= 2; i++ {
		if !g.Strike("a").IsZero() {
			t.Fatalf("quarantined at strike %d, before the threshold", i)
		}
	}
	c.t = c.t.Add(61 * time.Second) // both strikes leave the window
	for i := 1; i <= 2; i++ {
		if !g.Strike("a").IsZero() {
			t.Fatalf("old strikes counted (quarantined at new strike %d)", i)
		}
	}
	until := g.Strike("a")
	if want := c.t.Add(10 * time.Minute); !until.Equal(want) {
		t.Fatalf("quarantine until %v, want %v", until, want)
	}
	if u, q := g.Quarantined("a"); !q || !u.Equal(until) {
		t.Fatal("device not quarantined")
	}
	if _, q := g.Quarantined("b"); q {
		t.Fatal("another device quarantined")
	}
	if !g.Strike("a").IsZero() {
		t.Fatal("a strike during quarantine restarted it")
	}
	c.t = until
	if _, q := g.Quarantined("a"); q {
		t.Fatal("quarantine did not end")
	}
	g.Strike("a")
	g.Strike("a")
	if g.Strike("a").IsZero() {
		t.Fatal("no second quarantine")
	}
	g.Release("a")
	if _, q := g.Quarantined("a"); q {
		t.Fatal("release did not lift the quarantine")
	}
}

func TestPrune(t *testing.T) {
	g, c := newGuard(Limits{Window: time.Minute, Cooloff: time.Minute})
	for _, id := range []string{"a", "b", "c"} {
		g.Allow(id, 1)
	}
	c.t = c.t.Add(time.Hour)
	g.Allow("d", 1)
	if n := g.Len(); n != 1 {
		t.Fatalf("%d devices tracked after an hour idle, want 1", n)
	}
}
