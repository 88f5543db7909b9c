package server

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/testutil"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// TestVerdicts provokes every verdict a device can cause over real mTLS with
// an MQTT 5 client and checks the PUBACK reason, the metric, the security
// event at the cloud, and that only accepted records reach the cloud.
func TestVerdicts(t *testing.T) {
	e := newEnv(t, nil)
	e.device("oxi-1")
	e.device("oxi-2")
	a := e.app("ssl://" + e.gw.Cloud().AppsAddr())
	c := e.mustDial5("oxi-1")
	topic := telemetryTopic("oxi-1")

	seq := uint64(100)
	next := func() uint64 { seq++; return seq }
	signed := func(mod func(r *telemetry.Record)) []byte {
		r := spo2("oxi-1", next())
		if mod != nil {
			mod(r)
		}
		return e.sign("oxi-1", r)
	}
	if code := publish5(t, c, topic, signed(nil)); code != 0 {
		t.Fatalf("valid record: reason 0x%02x", code)
	}

	cases := []struct {
		name    string
		verdict verdict.Verdict
		topic   string
		payload func() []byte
	}{
		{"other device's topic", verdict.ACLDenied, telemetryTopic("oxi-2"), func() []byte { return signed(nil) }},
		{"wildcard-looking topic", verdict.ACLDenied, "devices/oxi-1/telemetry/x", func() []byte { return signed(nil) }},
		{"oversized", verdict.TooLarge, topic, func() []byte { return bytes.Repeat([]byte{0xa0}, 64<<10+1) }},
		{"not COSE", verdict.Malformed, topic, func() []byte { return []byte("{\"spo2\": 97}") }},
		{"COSE around bad CBOR", verdict.Malformed, topic, func() []byte {
			return e.signRaw("oxi-1", []byte{0xbf, 0x61, 0x76, 0x01, 0xff}) // indefinite-length map
		}},
		{"signed by another device", verdict.BadSignature, topic, func() []byte { return e.sign("oxi-2", spo2("oxi-1", next())) }},
		{"flipped signature byte", verdict.BadSignature, topic, func() []byte {
			b := signed(nil)
			b[len(b)-1] ^= 1
			return b
		}},
		{"record claims another device", verdict.IdentityMismatch, topic, func() []byte {
			return signed(func(r *telemetry.Record) { r.Dev = "oxi-2" })
		}},
		{"replayed seq", verdict.Replay, topic, func() []byte { return signed(func(r *telemetry.Record) { r.Seq = 101 }) }},
		{"from the future", verdict.Future, topic, func() []byte {
			return signed(func(r *telemetry.Record) { r.TS = time.Now().Add(10 * time.Minute).UnixMilli() })
		}},
		{"too old", verdict.Stale, topic, func() []byte {
			return signed(func(r *telemetry.Record) { r.TS = time.Now().Add(-8 * 24 * time.Hour).UnixMilli() })
		}},
		{"impossible SpO2", verdict.Schema, topic, func() []byte {
			return signed(func(r *telemetry.Record) { r.Obs[0].Val = telemetry.Scalar(130) })
		}},
		{"unknown kind", verdict.Schema, topic, func() []byte { return signed(func(r *telemetry.Record) { r.Kind = "mood" }) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.rejected(string(tc.verdict))
			code := publish5(t, c, tc.topic, tc.payload())
			if want := tc.verdict.Code().Code; code != want {
				t.Errorf("reason 0x%02x, want 0x%02x (%s)", code, want, tc.verdict)
			}
			if got := e.rejected(string(tc.verdict)); got != before+1 {
				t.Errorf("rejected_total{verdict=%s} = %v, want %v", tc.verdict, got, before+1)
			}
		})
	}
	// Abnormal but possible values are what a clinician must see.
	low := signed(func(r *telemetry.Record) { r.Obs[0].Val = telemetry.Scalar(70) })
	if code := publish5(t, c, topic, low); code != 0 {
		t.Fatalf("SpO2 70%%: reason 0x%02x, want accepted", code)
	}

	testutil.Eventually(t, 10*time.Second, "two records and the events at the cloud", func() bool {
		return len(a.ids()) == 2 && a.eventsWith(`"verdict":"stale"`) == 1 && a.eventsWith(`"verdict":"schema"`) == 2
	})
	ids := a.ids()
	if ids["oxi-1:101"] == 0 || ids[fmt.Sprintf("oxi-1:%d", seq)] == 0 {
		t.Fatalf("cloud received %v", ids)
	}
	for _, tc := range cases {
		if a.eventsWith(`"verdict":"`+string(tc.verdict)+`"`) == 0 {
			t.Errorf("no %s event at the cloud", tc.verdict)
		}
	}
	a.mu.Lock()
	m := a.msgs[0]
	a.mu.Unlock()
	if m.Site != "site1" || m.GW != "gw1" || m.Rec.Dev != "oxi-1" || m.Rec.Kind != "spo2" || len(m.Sig) == 0 {
		t.Errorf("cloud message %+v", m)
	}
	if a.topics[0] != "telemetry/site1/oxi-1/spo2" {
		t.Errorf("cloud topic %s", a.topics[0])
	}
	// The signature travels end to end.
	cert := e.deviceCert("oxi-1")
	if payload, err := envelope.VerifyCert(cert, m.Sig); err != nil {
		t.Errorf("end-to-end signature: %v", err)
	} else if r, err := telemetry.Decode(payload); err != nil || r.Seq != m.Rec.Seq {
		t.Errorf("signed record %v %v differs from rec %v", r, err, m.Rec)
	}
}

// TestMQTT311 checks section 4's 3.1.1 behaviour: a rejected QoS 1 message
// is acknowledged and dropped.
func TestMQTT311(t *testing.T) {
	e := newEnv(t, nil)
	e.device("bp-1")
	a := e.app("ssl://" + e.gw.Cloud().AppsAddr())
	c := e.dial3("bp-1")
	bad := e.sign("bp-1", spo2("bp-1", 5))
	bad[len(bad)-2] ^= 0xff
	tok := c.Publish(telemetryTopic("bp-1"), 1, false, bad)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("rejected message not acknowledged: %v", tok.Error())
	}
	tok = c.Publish(telemetryTopic("bp-1"), 1, false, e.sign("bp-1", spo2("bp-1", 6)))
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("valid message: %v", tok.Error())
	}
	testutil.Eventually(t, 10*time.Second, "the valid record at the cloud", func() bool { return len(a.ids()) == 1 })
	if e.rejected("bad_signature") != 1 || a.ids()["bp-1:6"] != 1 {
		t.Fatalf("rejected %v, cloud %v", e.rejected("bad_signature"), a.ids())
	}
	if !c.IsConnected() {
		t.Fatal("3.1.1 device disconnected after a rejection")
	}
}

// strictRate: a burst of 3 messages and next to no refill; the fourth
// violation within a minute quarantines for an hour.
func strictRate(c *config.Config) {
	c.Rate.Messages, c.Rate.Burst = 0.001, 3
	c.Quarantine.Violations, c.Quarantine.Window, c.Quarantine.Cooloff = 4, time.Minute, time.Hour
}

func TestRateLimitAndQuarantine(t *testing.T) {
	e := newEnv(t, strictRate)
	e.device("scale-1")
	a := e.app("ssl://" + e.gw.Cloud().AppsAddr())
	c := e.mustDial5("scale-1")
	for i := uint64(1); i <= 3; i++ {
		if code := publish5(t, c, telemetryTopic("scale-1"), e.sign("scale-1", spo2("scale-1", i))); code != 0 {
			t.Fatalf("message %d of the burst: 0x%02x", i, code)
		}
	}
	for i := uint64(4); i <= 7; i++ {
		code := publish5(t, c, telemetryTopic("scale-1"), e.sign("scale-1", spo2("scale-1", i)))
		if code != packets.ErrQuotaExceeded.Code {
			t.Fatalf("message %d over the rate: 0x%02x, want 0x97", i, code)
		}
	}
	// The fourth violation quarantines the device: it is disconnected and refused.
	testutil.Eventually(t, 10*time.Second, "the quarantine event", func() bool { return a.eventsWith(`"verdict":"quarantined"`) >= 1 })
	testutil.Eventually(t, 10*time.Second, "a refused reconnection", func() bool {
		_, connack, err := e.dial5("scale-1", "scale-1")
		return err != nil && connack != nil && connack.ReasonCode == packets.ErrNotAuthorized.Code
	})
	if got := len(a.ids()); got != 3 {
		t.Fatalf("cloud received %d records, want 3", got)
	}
}

// TestResendsTakeTheRate: resends are answered without a strike while the
// device keeps to its rate; beyond it they are rate-limited like any
// message, so they cannot keep the signature check busy for free.
func TestResendsTakeTheRate(t *testing.T) {
	e := newEnv(t, strictRate)
	e.device("scale-r")
	a := e.app("ssl://" + e.gw.Cloud().AppsAddr())
	c := e.mustDial5("scale-r")
	topic := telemetryTopic("scale-r")
	m5 := e.sign("scale-r", spo2("scale-r", 5))
	for i := range 3 { // the message, then two resends of it: the burst
		if code := publish5(t, c, topic, m5); code != 0 {
			t.Fatalf("send %d of seq 5: 0x%02x", i, code)
		}
	}
	sends := [][]byte{e.sign("scale-r", spo2("scale-r", 4)), m5, e.sign("scale-r", spo2("scale-r", 3)), m5}
	for i, m := range sends {
		if code := publish5(t, c, topic, m); code != packets.ErrQuotaExceeded.Code {
			t.Fatalf("resend %d over the rate: 0x%02x, want 0x97", i, code)
		}
	}
	testutil.Eventually(t, 10*time.Second, "the quarantine event", func() bool { return a.eventsWith(`"verdict":"quarantined"`) >= 1 })
	if got := len(a.ids()); got != 1 {
		t.Fatalf("cloud received %d records, want 1", got)
	}
}

// TestStaleBacklogIsNoStrike: a device back from a long time offline
// uploads records older than the accepted age; each is refused as stale,
// but none counts towards quarantine, so its fresh records still get in.
// Stale records take the rate budget, so a flood of them is rate-limited.
func TestStaleBacklogIsNoStrike(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Rate.Messages, c.Rate.Burst = 0.001, 12
		c.Quarantine.Violations, c.Quarantine.Window, c.Quarantine.Cooloff = 4, time.Minute, time.Hour
	})
	e.device("glu-b")
	c := e.mustDial5("glu-b")
	topic := telemetryTopic("glu-b")
	for seq := uint64(1); seq <= 10; seq++ {
		rec := spo2("glu-b", seq)
		rec.TS = time.Now().Add(-8 * 24 * time.Hour).UnixMilli()
		if code := publish5(t, c, topic, e.sign("glu-b", rec)); code != verdict.Stale.Code().Code {
			t.Fatalf("stale record %d: 0x%02x, want 0x%02x", seq, code, verdict.Stale.Code().Code)
		}
	}
	if code := publish5(t, c, topic, e.sign("glu-b", spo2("glu-b", 11))); code != 0 {
		t.Fatalf("fresh record after the backlog: 0x%02x, want 0x00", code)
	}
	if q := e.metric("vitalgate_gateway_quarantines_total", ""); q != 0 {
		t.Fatalf("%v quarantines for a stale backlog", q)
	}
	// Beyond the burst of 12 (10 stale, 1 fresh, and this one), stale
	// records are rate-limited, which counts.
	for seq := uint64(12); seq <= 20; seq++ {
		rec := spo2("glu-b", seq)
		rec.TS = time.Now().Add(-8 * 24 * time.Hour).UnixMilli()
		code := publish5(t, c, topic, e.sign("glu-b", rec))
		if seq > 12 && code != packets.ErrQuotaExceeded.Code {
			t.Fatalf("stale record %d over the rate: 0x%02x, want 0x97", seq, code)
		}
		if e.metric("vitalgate_gateway_quarantines_total", "") == 1 {
			return
		}
	}
	t.Fatal("a flood of stale records was never quarantined")
}

func TestConnectionIdentity(t *testing.T) {
	e := newEnv(t, nil)
	e.device("glu-1")
	e.device("glu-2")
	// A client ID that differs from the certificate is refused at CONNECT.
	if _, ack, err := e.dial5("glu-1", "glu-2"); err == nil || ack == nil || ack.ReasonCode != packets.ErrClientIdentifierNotValid.Code {
		t.Fatalf("client ID of another device: err %v ack %+v", err, ack)
	}
	// Subscriptions: own command topics only.
	c := e.mustDial5("glu-1")
	if got := subscribe5(t, c, "devices/glu-1/cmd/#"); got >= 0x80 {
		t.Fatalf("own cmd topic refused: 0x%02x", got)
	}
	for _, f := range []string{"devices/glu-2/cmd/#", "devices/#", "#", "devices/glu-1/telemetry"} {
		if got := subscribe5(t, c, f); got < 0x80 {
			t.Errorf("subscribe %s granted: 0x%02x", f, got)
		}
	}
	// Refused CONNECTs and subscriptions are counted with the messages.
	if m, a := e.rejected("identity_mismatch"), e.rejected("acl_denied"); m != 1 || a != 4 {
		t.Errorf("rejected_total: identity_mismatch %v, acl_denied %v; want 1 and 4", m, a)
	}
}

// TestSubscribeBounds: a device's command filters are bounded in length,
// depth and number, so that SUBSCRIBE cannot grow the topic tree without
// limit; re-subscribing to a held filter is not a new one.
func TestSubscribeBounds(t *testing.T) {
	e := newEnv(t, nil)
	e.device("glu-s")
	c := e.mustDial5("glu-s")
	cmd := "devices/glu-s/cmd/"
	want := func(filter string, granted bool) {
		t.Helper()
		if got := subscribe5(t, c, filter); (got < 0x80) != granted {
			t.Errorf("subscribe %.60q (%d bytes): 0x%02x, want granted %v", filter, len(filter), got, granted)
		}
	}
	want(cmd+strings.Repeat("/", 2000), false)
	want(cmd+strings.Repeat("a", 300), false)
	want(cmd+"a/b/c/d/e/f/g/h/i", false)
	want(cmd+"a/b/c/d/e/f/g/h", true)
	want(cmd+"#", true)
	want("devices/glu-s/cmd", true)
	for i := range 13 {
		want(fmt.Sprintf("%sf%d", cmd, i), true)
	}
	want(cmd+"one-more", false) // the 17th
	want(cmd+"#", true)
	// One SUBSCRIBE over the limit: a reason code per filter, the held
	// filter granted again.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{
		{Topic: cmd + "#", QoS: 1}, {Topic: cmd + "x1", QoS: 1}, {Topic: cmd + "x2", QoS: 1}}})
	if sa == nil || len(sa.Reasons) != 3 || sa.Reasons[0] >= 0x80 || sa.Reasons[1] < 0x80 || sa.Reasons[2] < 0x80 {
		t.Fatalf("three filters over the limit: %+v, %v", sa, err)
	}
}

// TestResendIsNotReplay: a device that lost a PUBACK resends the same signed
// message; it is acknowledged again and stored once. Another message with
// the same seq is a replay.
func TestResendIsNotReplay(t *testing.T) {
	e := newEnv(t, nil)
	e.device("oxi-r")
	a := e.app("ssl://" + e.gw.Cloud().AppsAddr())
	c := e.mustDial5("oxi-r")
	msg := e.sign("oxi-r", spo2("oxi-r", 7))
	for i := 0; i < 2; i++ {
		if code := publish5(t, c, telemetryTopic("oxi-r"), msg); code != 0 {
			t.Fatalf("send %d: 0x%02x", i, code)
		}
	}
	other := spo2("oxi-r", 7)
	other.Obs[0].Val = telemetry.Scalar(91)
	if code := publish5(t, c, telemetryTopic("oxi-r"), e.sign("oxi-r", other)); code != verdict.Replay.Code().Code {
		t.Fatalf("different message with the same seq: 0x%02x, want replay", code)
	}
	if code := publish5(t, c, telemetryTopic("oxi-r"), e.sign("oxi-r", spo2("oxi-r", 8))); code != 0 {
		t.Fatalf("next seq: 0x%02x", code)
	}
	testutil.Eventually(t, 10*time.Second, "two records at the cloud", func() bool { return len(a.ids()) == 2 })
	if n := e.gw.Queue().Len(); n > 0 {
		testutil.Eventually(t, 10*time.Second, "the queue to drain", func() bool { return e.gw.Queue().Len() == 0 })
	}
	if ids := a.ids(); ids["oxi-r:7"] != 1 {
		t.Fatalf("seq 7 delivered %d times", ids["oxi-r:7"])
	}
	if e.rejected("replay") != 1 {
		t.Fatalf("replays counted: %v", e.rejected("replay"))
	}
}

// Replays just below the last accepted seq look like the resends of a device
// whose connection dropped with several PUBACKs lost: they get the replay
// verdict but do not quarantine the device. Older seqs do count.
func TestRecentReplaysDoNotQuarantine(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Quarantine.Violations, c.Quarantine.Window, c.Quarantine.Cooloff = 3, time.Minute, time.Hour
	})
	e.device("glu-q")
	c := e.mustDial5("glu-q")
	for seq := uint64(100); seq <= 110; seq++ {
		if code := publish5(t, c, telemetryTopic("glu-q"), e.sign("glu-q", spo2("glu-q", seq))); code != 0 {
			t.Fatalf("seq %d: 0x%02x", seq, code)
		}
	}
	for seq := uint64(105); seq <= 109; seq++ { // five resends, differently signed
		if code := publish5(t, c, telemetryTopic("glu-q"), e.sign("glu-q", spo2("glu-q", seq))); code != verdict.Replay.Code().Code {
			t.Fatalf("resend of %d: 0x%02x, want replay", seq, code)
		}
	}
	if code := publish5(t, c, telemetryTopic("glu-q"), e.sign("glu-q", spo2("glu-q", 111))); code != 0 {
		t.Fatalf("device quarantined by resends: 0x%02x", code)
	}
	if e.rejected("replay") != 5 || e.metric("vitalgate_gateway_quarantines_total", "") != 0 {
		t.Fatalf("replays %v, quarantines %v", e.rejected("replay"), e.metric("vitalgate_gateway_quarantines_total", ""))
	}
	for seq := uint64(1); seq <= 3; seq++ { // far below: replays that count
		publish5(t, c, telemetryTopic("glu-q"), e.sign("glu-q", spo2("glu-q", seq)))
	}
	testutil.Eventually(t, 10*time.Second, "the quarantine", func() bool { return e.metric("vitalgate_gateway_quarantines_total", "") == 1 })
}
