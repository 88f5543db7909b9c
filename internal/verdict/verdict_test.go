package verdict

import (
	"errors"
	"fmt"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

func TestCodes(t *testing.T) {
	want := map[Verdict]byte{
		Accepted: 0x00, ACLDenied: 0x87, TooLarge: 0x95, Malformed: 0x99, BadSignature: 0x87,
		IdentityMismatch: 0x87, Replay: 0x83, Stale: 0x83, Future: 0x83, Schema: 0x99,
		RateLimited: 0x97, Quarantined: 0x87, Overloaded: 0x97,
	}
	if len(want) != len(All()) {
		t.Fatalf("table has %d verdicts, All() has %d", len(want), len(All()))
	}
	for _, v := range All() {
		c := v.Code()
		if c.Code != want[v] {
			t.Errorf("%s: code 0x%02x, want 0x%02x", v, c.Code, want[v])
		}
		// mochi type-asserts the hook's error: the value must be a bare packets.Code.
		var err error = c
		if _, ok := err.(packets.Code); !ok {
			t.Errorf("%s: code is not a bare packets.Code", v)
		}
	}
	if Verdict("nope").Valid() || !Replay.Valid() {
		t.Error("Valid is wrong")
	}
}

func TestOf(t *testing.T) {
	if Of(nil) != Accepted {
		t.Error("nil is not accepted")
	}
	wrapped := fmt.Errorf("stage: %w", New(Replay, "seq %d <= %d", 3, 5))
	if Of(wrapped) != Replay {
		t.Errorf("Of(wrapped) = %q", Of(wrapped))
	}
	if Of(errors.New("io")) != "" {
		t.Error("plain error has a verdict")
	}
	if got := New(Replay, "seq %d", 1).Error(); got != "replay: seq 1" {
		t.Errorf("Error() = %q", got)
	}
}
