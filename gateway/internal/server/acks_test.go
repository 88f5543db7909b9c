package server

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/internal/testutil"
)

// rawDevice speaks MQTT over the device's TLS connection packet by packet,
// so a test sees every packet the gateway writes, extra ones included.
type rawDevice struct {
	t       testing.TB
	conn    net.Conn
	r       *bufio.Reader
	version byte
}

func (e *env) rawDial(id string, version byte) *rawDevice {
	e.t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.gw.DeviceAddr(), e.deviceTLS(id))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	d := &rawDevice{t: e.t, conn: conn, r: bufio.NewReader(conn), version: version}
	name := "MQTT"
	if version == 3 {
		name = "MQIsdp"
	}
	d.send(func(b *bytes.Buffer) error {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: version,
			Connect: packets.ConnectParams{ProtocolName: []byte(name), Clean: true, Keepalive: 30, ClientIdentifier: id}}
		return pk.ConnectEncode(b)
	})
	if pk := d.read(); pk.FixedHeader.Type != packets.Connack || pk.ReasonCode != 0 {
		e.t.Fatalf("CONNACK: type %d, reason 0x%02x", pk.FixedHeader.Type, pk.ReasonCode)
	}
	return d
}

func (d *rawDevice) send(encode func(*bytes.Buffer) error) {
	d.t.Helper()
	var b bytes.Buffer
	if err := encode(&b); err != nil {
		d.t.Fatal(err)
	}
	if _, err := d.conn.Write(b.Bytes()); err != nil {
		d.t.Fatal(err)
	}
}

func (d *rawDevice) publish(id uint16, topic string, payload []byte) {
	d.t.Helper()
	d.publishQos(1, id, topic, payload)
}

func (d *rawDevice) publishQos(qos byte, id uint16, topic string, payload []byte) {
	d.t.Helper()
	d.send(func(b *bytes.Buffer) error {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, ProtocolVersion: d.version,
			PacketID: id, TopicName: topic, Payload: payload}
		return pk.PublishEncode(b)
	})
}

func (d *rawDevice) ping() {
	d.t.Helper()
	d.send(func(b *bytes.Buffer) error {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}, ProtocolVersion: d.version}
		return pk.PingreqEncode(b)
	})
}

// read returns the next packet the gateway wrote (CONNACK, PUBACK,
// DISCONNECT and PINGRESP are decoded).
func (d *rawDevice) read() packets.Packet {
	d.t.Helper()
	d.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	h, err := d.r.ReadByte()
	if err != nil {
		d.t.Fatalf("read: %v", err)
	}
	pk := packets.Packet{ProtocolVersion: d.version}
	if err := pk.FixedHeader.Decode(h); err != nil {
		d.t.Fatal(err)
	}
	n, _, err := packets.DecodeLength(d.r)
	if err != nil {
		d.t.Fatal(err)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(d.r, body); err != nil {
		d.t.Fatal(err)
	}
	pk.FixedHeader.Remaining = n
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	}
	if err != nil {
		d.t.Fatalf("decode packet type %d: %v", pk.FixedHeader.Type, err)
	}
	return pk
}

// Every PUBLISH gets exactly one PUBACK, in order, whatever its verdict: a
// stored message, the resend of the last one, and a rejected one. The
// PINGREQ sent last proves nothing else was written before its PINGRESP.
func TestOnePubackPerPublish(t *testing.T) {
	e := newEnv(t, nil)
	for _, version := range []byte{3, 4, 5} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) {
			id := fmt.Sprintf("t-ack%d", version)
			e.device(id)
			d := e.rawDial(id, version)
			first := e.sign(id, spo2(id, 1))
			d.publish(1, telemetryTopic(id), first)
			d.publish(2, telemetryTopic(id), first) // identical resend
			d.publish(3, telemetryTopic(id), e.sign(id, spo2(id, 2)))
			d.publish(4, telemetryTopic(id), []byte("not a COSE message"))
			d.ping()
			want := []struct {
				id   uint16
				code byte
			}{{1, 0}, {2, 0}, {3, 0}, {4, 0}}
			if version == 5 {
				want[3].code = 0x99 // malformed: payload format invalid
			}
			for _, w := range want {
				pk := d.read()
				if pk.FixedHeader.Type != packets.Puback || pk.PacketID != w.id || pk.ReasonCode != w.code {
					t.Fatalf("got packet type %d id %d reason 0x%02x, want PUBACK %d reason 0x%02x",
						pk.FixedHeader.Type, pk.PacketID, pk.ReasonCode, w.id, w.code)
				}
			}
			if pk := d.read(); pk.FixedHeader.Type != packets.Pingresp {
				t.Fatalf("got packet type %d id %d after the PUBACKs, want PINGRESP", pk.FixedHeader.Type, pk.PacketID)
			}
		})
	}
	if got := e.metric("vitalgate_gateway_accepted_total", ""); got != 6 {
		t.Fatalf("accepted %v, want 6", got)
	}
	// Every commit is timed: the histogram counts as many as the counter,
	// once the relay's removals (commits too) have settled.
	testutil.Eventually(t, 10*time.Second, "as many commits timed as counted", func() bool {
		commits, timed := e.metric("vitalgate_queue_commits_total", ""), e.metric("vitalgate_queue_commit_seconds", "")
		return commits >= 1 && timed == commits
	})
}

// A QoS 2 PUBLISH is refused, not stored: MQTT 5 gets DISCONNECT 0x9B (the
// CONNACK advertised maximum QoS 1), MQTT 3.1.1 and 3.1 have the connection
// closed without any packet, since they have no way to say why. Before, the
// QoS was lowered, the record stored and a PUBACK sent, which the device
// takes for a protocol error.
func TestQos2PublishRefused(t *testing.T) {
	e := newEnv(t, nil)
	for _, version := range []byte{3, 4, 5} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) {
			id := fmt.Sprintf("t-qos2-%d", version)
			e.device(id)
			d := e.rawDial(id, version)
			d.publishQos(2, 1, telemetryTopic(id), e.sign(id, spo2(id, 1)))
			if version == 5 {
				pk := d.read()
				if pk.FixedHeader.Type != packets.Disconnect || pk.ReasonCode != packets.ErrQosNotSupported.Code {
					t.Fatalf("got packet type %d reason 0x%02x, want DISCONNECT 0x9b", pk.FixedHeader.Type, pk.ReasonCode)
				}
			}
			d.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if b, err := d.r.ReadByte(); err == nil {
				t.Fatalf("gateway wrote a packet (first byte 0x%02x), want the connection closed", b)
			} else if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("connection still open 10 s after a QoS 2 PUBLISH")
			}
			if _, ok := e.gw.Queue().LastSeq(id); ok {
				t.Fatal("the QoS 2 record was stored")
			}
		})
	}
	if got := e.metric("vitalgate_gateway_accepted_total", ""); got != 0 {
		t.Fatalf("accepted %v, want 0", got)
	}
	if got := e.rejected("malformed"); got != 3 {
		t.Fatalf("malformed rejections %v, want 3", got)
	}
}
