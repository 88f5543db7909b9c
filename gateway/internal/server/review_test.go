package server

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// A CONNECT with a will is refused: mochi publishes wills without any ACL
// or pipeline check, so a will could write into another device's topics.
func TestWillRefused(t *testing.T) {
	e := newEnv(t, nil)
	e.device("oxi-w")
	conn, err := tls.Dial("tcp", e.gw.DeviceAddr(), e.deviceTLS("oxi-w"))
	if err != nil {
		t.Fatal(err)
	}
	c := newClient5(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := c.Connect(ctx, &paho5.Connect{ClientID: "oxi-w", KeepAlive: 30, CleanStart: true,
		WillMessage: &paho5.WillMessage{Topic: "devices/other/cmd/reboot", Payload: []byte("forged"), QoS: 1}})
	if err == nil || ack == nil || ack.ReasonCode != packets.ErrNotAuthorized.Code {
		t.Fatalf("CONNECT with a will: err %v ack %+v", err, ack)
	}
}

// A certificate revoked between the TLS handshake and CONNECT is refused.
func TestRevokedBeforeConnect(t *testing.T) {
	e := newEnv(t, nil)
	e.device("bp-late")
	conn, err := tls.Dial("tcp", e.gw.DeviceAddr(), e.deviceTLS("bp-late"))
	if err != nil {
		t.Fatal(err)
	}
	// With TLS 1.3 the client is done before the server has checked its
	// certificate: wait for the server's side of the handshake.
	testutil.Eventually(t, 10*time.Second, "the server to finish the handshake", func() bool { return e.metric("vitalgate_gateway_handshakes_total", "ok") == 1 })
	if err := pki.Revoke(e.pki, "bp-late"); err != nil {
		t.Fatal(err)
	}
	if err := e.gw.Reload(); err != nil {
		t.Fatal(err)
	}
	c := newClient5(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := c.Connect(ctx, &paho5.Connect{ClientID: "bp-late", KeepAlive: 30, CleanStart: true})
	if err == nil || ack == nil || ack.ReasonCode != packets.ErrNotAuthorized.Code {
		t.Fatalf("revoked after handshake: err %v ack %+v", err, ack)
	}
}

// Sessions mochi gives up on after OnConnect (here: a client whose maximum
// packet size is too small for the CONNACK) are forgotten.
func TestAbandonedConnectsDoNotLeak(t *testing.T) {
	e := newEnv(t, nil)
	e.device("glu-x")
	tiny := uint32(4)
	for i := 0; i < 5; i++ {
		conn, err := tls.Dial("tcp", e.gw.DeviceAddr(), e.deviceTLS("glu-x"))
		if err != nil {
			t.Fatal(err)
		}
		c := newClient5(conn)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c.Connect(ctx, &paho5.Connect{ClientID: "glu-x", KeepAlive: 30, CleanStart: true,
			Properties: &paho5.ConnectProperties{MaximumPacketSize: &tiny}})
		cancel()
		conn.Close()
	}
	testutil.Eventually(t, 10*time.Second, "no sessions left", func() bool { return e.metric("vitalgate_gateway_connections", "") == 0 })
}

// The mark of the last accepted message survives a restart: a resend after
// the restart is still a resend, not a replay.
func TestResendAcrossRestart(t *testing.T) {
	e := newEnv(t, nil)
	e.device("t-r")
	c := e.mustDial5("t-r")
	msg := e.sign("t-r", spo2("t-r", 3))
	if code := publish5(t, c, telemetryTopic("t-r"), msg); code != 0 {
		t.Fatalf("first send: 0x%02x", code)
	}
	c.Disconnect(&paho5.Disconnect{})
	e.gw.Close()
	e.start()
	c = e.mustDial5("t-r")
	if code := publish5(t, c, telemetryTopic("t-r"), msg); code != 0 {
		t.Fatalf("resend after restart: 0x%02x, want 0x00", code)
	}
	if e.rejected("replay") != 0 {
		t.Fatal("resend counted as a replay")
	}
}
