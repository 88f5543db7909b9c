package ingest

import (
	"crypto/tls"
	"errors"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/gateway/internal/spool"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

func TestReplyFor(t *testing.T) {
	cases := []struct {
		v       verdict.Verdict
		version byte
		qos     byte
		want    packets.Code
	}{
		{verdict.BadSignature, 5, 1, packets.ErrNotAuthorized},
		{verdict.Schema, 5, 1, packets.ErrPayloadFormatInvalid},
		{verdict.Overloaded, 5, 1, packets.ErrQuotaExceeded},
		{verdict.BadSignature, 4, 1, packets.CodeSuccessIgnore}, // 3.1.1: acknowledged and dropped
		{verdict.Overloaded, 4, 1, packets.ErrRejectPacket},     // 3.1.1: acknowledgement withheld
		{verdict.Replay, 5, 0, packets.CodeSuccessIgnore},       // QoS 0: dropped
		{verdict.Overloaded, 4, 0, packets.CodeSuccessIgnore},
	}
	for _, c := range cases {
		err := replyFor(c.v, c.version, c.qos)
		// mochi type-asserts err.(packets.Code): it must be bare, never wrapped.
		code, ok := err.(packets.Code)
		if !ok || code != c.want {
			t.Errorf("%s v%d qos%d: %#v, want %v", c.v, c.version, c.qos, err, c.want)
		}
	}
}

// TestSeqVerdict: the queue's replay rule outcome becomes the device's
// answer here and nowhere else, the same for the early check and for the
// commit's final answer.
func TestSeqVerdict(t *testing.T) {
	h := NewHook(Options{ResendWindow: 64})
	last := func(o spool.Outcome, last uint64) spool.Result {
		return spool.Result{Outcome: o, Last: last, HasLast: true, Limit: 1000}
	}
	cases := []struct {
		seq      uint64
		res      spool.Result
		want     verdict.Verdict
		noStrike bool
		detail   string
	}{
		{101, last(spool.Accepted, 100), verdict.Accepted, false, ""},
		{100, last(spool.Duplicate, 100), "", false, ""},
		{40, last(spool.Replay, 100), verdict.Replay, true, "seq 40 not above last accepted 100 (resend?)"},
		{36, last(spool.Replay, 100), verdict.Replay, false, "seq 36 not above last accepted 100"},
		{2000, last(spool.SeqJump, 100), verdict.Replay, false, "seq jump: seq 2000 is 1900 past last accepted 100, limit 1000"},
		{2000, spool.Result{Outcome: spool.SeqJump, Limit: 1000}, verdict.Replay, false, "seq jump: first seq 2000 of the device is over 1000"},
	}
	for _, c := range cases {
		err := h.seqVerdict(c.seq, c.res)
		if c.res.Outcome == spool.Duplicate {
			if err != errDuplicate {
				t.Errorf("duplicate: %v, want errDuplicate", err)
			}
			continue
		}
		if verdict.Of(err) != c.want || isNoStrike(err) != c.noStrike {
			t.Errorf("seq %d, %+v: %v (no strike %v), want %q (no strike %v)", c.seq, c.res, err, isNoStrike(err), c.want, c.noStrike)
			continue
		}
		var e *verdict.Error
		if err != nil && (!errors.As(err, &e) || e.Detail != c.detail) {
			t.Errorf("seq %d: detail of %v, want %q", c.seq, err, c.detail)
		}
	}
	if err := h.seqVerdict(1, spool.Result{}); err == nil || verdict.Of(err) != "" {
		t.Errorf("a result not judged: %v, want an internal error", err)
	}
}

func listenerFor(t *testing.T, maxConns int, timeout time.Duration) (*Listener, string, *atomic.Int64) {
	t.Helper()
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	pool, err := pki.LoadPool(filepath.Join(dir, pki.FileDeviceCA))
	if err != nil {
		t.Fatal(err)
	}
	tc, err := pki.ServerTLS(filepath.Join(dir, pki.FileGateway), filepath.Join(dir, pki.FileGatewayKey), pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	var failed atomic.Int64
	l, err := Listen("127.0.0.1:0", ListenerConfig{TLS: tc, MaxConns: maxConns, AcceptRate: 1000, HandshakeTimeout: timeout,
		OnHandshake: func(_ string, _ *tls.ConnectionState, err error) {
			if err != nil {
				failed.Add(1)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, dir, &failed
}

// A peer that opens TCP and never starts TLS is cut off after the handshake
// timeout and frees its slot.
func TestListenerSlowHandshake(t *testing.T) {
	l, _, failed := listenerFor(t, 1, 200*time.Millisecond)
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("silent peer got data")
	} else if ne := (net.Error)(nil); errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("silent peer was not disconnected")
	}
	if !testutil.Poll(10*time.Second, func() bool { return l.Open() == 0 && failed.Load() == 1 }) {
		t.Fatalf("slot not freed: open %d, failed handshakes %d", l.Open(), failed.Load())
	}
}

// Above MaxConns, new connections are closed at once.
func TestListenerMaxConns(t *testing.T) {
	l, dir, _ := listenerFor(t, 1, 5*time.Second)
	if err := pki.IssueDevice(dir, "d1", pki.P256, 1); err != nil {
		t.Fatal(err)
	}
	crt, key := pki.DevicePaths(dir, "d1")
	tc, err := pki.ClientTLS(filepath.Join(dir, pki.FileCA), crt, key)
	if err != nil {
		t.Fatal(err)
	}
	tc.ServerName = "localhost"
	first, err := tls.Dial("tcp", l.Addr().String(), tc)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	got, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	second, err := tls.Dial("tcp", l.Addr().String(), tc)
	if err == nil {
		second.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = second.Read(make([]byte, 1))
		second.Close()
	}
	if err == nil {
		t.Fatal("connection over the limit was served")
	}
	// Closing the first frees the slot.
	got.Close()
	third, err := tls.Dial("tcp", l.Addr().String(), tc)
	if err != nil {
		t.Fatalf("slot not freed: %v", err)
	}
	third.Close()
}

// The connection cap leaves FDReserve descriptors of the open-file limit to
// the rest of the gateway, and at least a quarter of a small limit to
// devices.
func TestConnCap(t *testing.T) {
	for _, c := range []struct {
		max     int
		nofile  uint64
		want    int
		lowered bool
	}{
		{20000, 1024, 512, true},       // ulimit -n 1024 and the default max_connections
		{20000, 1 << 20, 20000, false}, // systemd's default hard limit
		{20000, 20000 + FDReserve, 20000, false},
		{20000, 20000 + FDReserve - 1, 19999, true},
		{100, 256, 64, true}, // a quarter of a small limit
		{10, 256, 10, false},
		{20000, 0, 1, true},
	} {
		got, lowered := ConnCap(c.max, c.nofile)
		if got != c.want || lowered != c.lowered {
			t.Errorf("ConnCap(%d, %d) = %d, %v; want %d, %v", c.max, c.nofile, got, lowered, c.want, c.lowered)
		}
	}
}
