package conform

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// Steps of the script (see the package documentation).
const (
	stepAck         = iota // acknowledge the first DisconnectAfter messages
	stepDrop               // lose the connection on the next new message, before its PUBACK
	stepAwaitResend        // wait for that message again
	stepQuota              // MQTT 5: answer the next new message 0x97
	stepAwaitQuota         // wait for it again
	stepReject             // answer the next new message 0x83
	stepFree               // acknowledge everything valid
)

// checker is the mochi hook that judges the device under test.
type checker struct {
	mqtt.HookBase
	o       Options
	t       *tally
	schemas *telemetry.Schemas
	done    chan struct{}

	mu         sync.Mutex
	dev        string
	cert       *x509.Certificate
	version    byte
	connects   int
	messages   int
	accepted   int
	step       int
	lastSeq    uint64
	haveSeq    bool
	lastOK     []byte // payload of the last acknowledged message
	dropSeq    uint64
	dropBytes  []byte
	quotaSeq   uint64
	rejectSeq  uint64
	rejectSent bool
	ended      bool
}

func (c *checker) ID() string { return "conformance" }

func (c *checker) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish}, []byte{b})
}

func peer(cl *mqtt.Client) *x509.Certificate {
	tc, ok := cl.Net.Conn.(*tls.Conn)
	if !ok || len(tc.ConnectionState().PeerCertificates) == 0 {
		return nil
	}
	return tc.ConnectionState().PeerCertificates[0]
}

// verifyPeer is the TLS rule: the chain verifies against the device CAs.
func (c *checker) verifyPeer(pool *x509.CertPool) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		var certs []*x509.Certificate
		for _, r := range raw {
			cert, err := x509.ParseCertificate(r)
			if err != nil {
				c.t.check(RuleTLS, false, "client certificate does not parse: %v", err)
				return err
			}
			certs = append(certs, cert)
		}
		if len(certs) == 0 {
			c.t.check(RuleTLS, false, "no client certificate")
			return errors.New("no client certificate")
		}
		inter := x509.NewCertPool()
		for _, ic := range certs[1:] {
			inter.AddCert(ic)
		}
		_, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: c.o.now(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		c.t.check(RuleTLS, err == nil, "certificate of %q: %v", certs[0].Subject.CommonName, err)
		return err
	}
}

func (c *checker) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	cert := peer(cl)
	if cert == nil {
		return false
	}
	id := cert.Subject.CommonName
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended || (c.o.Device != "" && id != c.o.Device) || (c.dev != "" && id != c.dev) {
		return false // not the device under test
	}
	c.dev, c.cert, c.version = id, cert, cl.Properties.ProtocolVersion
	c.t.check(RuleDeviceID, pki.ValidDeviceID(id), "common name %q is not a device ID", id)
	c.t.check(RuleClientID, string(cl.ID) == id, "client ID %q on the certificate of %q", cl.ID, id)
	c.t.check(RuleNoWill, !pk.Connect.WillFlag, "CONNECT with a will on %q", pk.Connect.WillTopic)
	c.connects++
	if c.step == stepAwaitResend {
		c.t.met(RuleReconnect)
	}
	c.o.logf("connect %d of %s (MQTT %d)", c.connects, id, c.version)
	return string(cl.ID) == id
}

func (c *checker) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if write {
		return true // judged in OnPublish, with a reason code
	}
	return len(topic) <= 256 && bytes.HasPrefix([]byte(topic), []byte("devices/"+cl.ID+"/cmd/"))
}

// OnPublish judges one message and answers it as the script says.
func (c *checker) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended || string(cl.ID) != c.dev {
		return pk, packets.ErrRejectPacket
	}
	c.messages++
	code := c.judge(cl, &pk)
	switch {
	case code == codeDrop:
		c.o.logf("seq %d: dropping the connection before its PUBACK", c.dropSeq)
		cl.Stop(errors.New("conformance check: connection lost before the PUBACK"))
		return pk, packets.ErrRejectPacket
	case code != packets.CodeSuccess && c.version == 5 && pk.FixedHeader.Qos > 0:
		return pk, code
	case pk.FixedHeader.Qos > 0:
		_ = cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
	}
	c.finish()
	pk.FixedHeader.Qos, pk.FixedHeader.Retain, pk.Ignore = 0, false, true
	return pk, nil
}

// codeDrop asks OnPublish to close the connection without a PUBACK.
var codeDrop = packets.Code{Code: 0xff, Reason: "drop"}

// judge applies every rule to the message and returns the answer.
func (c *checker) judge(cl *mqtt.Client, pk *packets.Packet) packets.Code {
	telemetryTopic, statusTopic := "devices/"+c.dev+"/telemetry", "devices/"+c.dev+"/status"
	c.t.check(RuleTopic, pk.TopicName == telemetryTopic || pk.TopicName == statusTopic, "PUBLISH on %q", clip(pk.TopicName))
	if pk.TopicName != telemetryTopic && pk.TopicName != statusTopic {
		return verdict.ACLDenied.Code()
	}
	c.t.check(RuleRetain, !pk.FixedHeader.Retain, "retained PUBLISH")
	if pk.TopicName == telemetryTopic {
		c.t.check(RuleQoS, pk.FixedHeader.Qos == 1, "telemetry with QoS %d", pk.FixedHeader.Qos)
	}
	payload, err := envelope.VerifyCert(c.cert, pk.Payload)
	c.t.check(RuleCOSE, err == nil, "%v", err)
	if err != nil {
		return verdict.Of(err).Code()
	}
	seq, code := c.record(pk.TopicName == statusTopic, payload)
	if code != packets.CodeSuccess {
		return code
	}
	return c.sequence(seq, pk.Payload)
}

// record checks the record (or status record) and returns its seq, and
// the gateway's answer to it when a check fails.
func (c *checker) record(status bool, payload []byte) (uint64, packets.Code) {
	var seq uint64
	var dev string
	var ts int64
	var err error
	if status {
		var st *telemetry.Status
		if st, err = telemetry.DecodeStatus(payload); err == nil {
			seq, dev, ts, err = st.Seq, st.Dev, st.TS, st.Check()
		}
	} else {
		var rec *telemetry.Record
		if rec, err = telemetry.Decode(payload); err == nil {
			seq, dev, ts, err = rec.Seq, rec.Dev, rec.TS, c.schemas.Check(rec)
		}
	}
	c.t.check(RuleRecord, err == nil, "%v", err)
	if err != nil {
		return 0, verdict.Schema.Code()
	}
	c.t.check(RuleIdentity, dev == c.dev, "record dev %q", clip(dev))
	if dev != c.dev {
		return 0, verdict.IdentityMismatch.Code()
	}
	err = telemetry.CheckTime(ts, c.o.now(), 0)
	c.t.check(RuleTime, err == nil, "seq %d: %v", seq, err)
	if err != nil {
		return 0, verdict.Future.Code()
	}
	return seq, packets.CodeSuccess
}

// sequence applies the seq rule and the script to a valid message.
func (c *checker) sequence(seq uint64, raw []byte) packets.Code {
	switch {
	case c.step == stepAwaitResend && seq == c.dropSeq:
		c.t.check(RuleResend, bytes.Equal(raw, c.dropBytes), "seq %d was sent again with other bytes", seq)
		c.t.met(RuleResend)
		c.accept(seq, raw)
		c.step = stepQuota
		if c.version != 5 {
			c.step = stepFree
		}
		return packets.CodeSuccess
	case c.step == stepAwaitResend:
		c.t.check(RuleResend, false, "after the lost PUBACK of seq %d the device sent seq %d instead", c.dropSeq, seq)
		c.step = stepFree
	case c.haveSeq && seq == c.lastSeq && bytes.Equal(raw, c.lastOK):
		return packets.CodeSuccess // the resend of the last acknowledged message: allowed
	case c.rejectSent && seq == c.rejectSeq:
		c.t.check(RuleDropReject, false, "seq %d, answered 0x83, was sent again", seq)
		return verdict.Replay.Code()
	}
	c.t.check(RuleSeq, !c.haveSeq || seq > c.lastSeq, "seq %d after seq %d", seq, c.lastSeq)
	if c.haveSeq && seq <= c.lastSeq {
		return verdict.Replay.Code()
	}
	return c.script(seq, raw)
}

// script answers a new valid message by the step of the script.
func (c *checker) script(seq uint64, raw []byte) packets.Code {
	switch c.step {
	case stepAck:
		if c.accepted+1 >= c.o.DisconnectAfter {
			c.step = stepDrop
		}
	case stepDrop:
		c.dropSeq, c.dropBytes, c.step = seq, bytes.Clone(raw), stepAwaitResend
		return codeDrop
	case stepQuota:
		c.quotaSeq, c.step = seq, stepAwaitQuota
		return packets.ErrQuotaExceeded
	case stepAwaitQuota:
		c.t.check(RuleQuota, seq == c.quotaSeq, "seq %d answered 0x97 was not sent again before seq %d", c.quotaSeq, seq)
		if seq == c.quotaSeq {
			c.t.met(RuleQuota)
		}
		c.step = stepReject
	case stepReject:
		c.rejectSeq, c.rejectSent, c.step = seq, true, stepFree
		c.t.check(RuleDropReject, true, "")
		return verdict.Replay.Code()
	}
	c.accept(seq, raw)
	return packets.CodeSuccess
}

func (c *checker) accept(seq uint64, raw []byte) {
	c.lastSeq, c.haveSeq, c.lastOK = seq, true, bytes.Clone(raw)
	c.accepted++
	c.t.check(RuleSeq, true, "")
}

// finish ends the run once the script is through and enough messages were
// acknowledged after it.
func (c *checker) finish() {
	if c.step == stepFree && c.accepted >= c.o.Messages && !c.ended {
		c.ended = true
		close(c.done)
	}
}

// scripted says, for each script rule, why it failed if it was never met;
// "" when it was not reached (not tested).
func (c *checker) scripted() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := map[string]string{RuleReconnect: "", RuleResend: "", RuleQuota: "", RuleDropReject: ""}
	if c.step >= stepAwaitResend {
		m[RuleReconnect] = fmt.Sprintf("the device did not reconnect after its connection was lost before the PUBACK of seq %d", c.dropSeq)
		m[RuleResend] = fmt.Sprintf("seq %d, whose PUBACK was lost, was not sent again", c.dropSeq)
	}
	if c.version == 5 && c.step >= stepAwaitQuota {
		m[RuleQuota] = fmt.Sprintf("seq %d, answered 0x97, was not sent again", c.quotaSeq)
	}
	if c.version != 5 && c.version != 0 {
		c.t.note(RuleQuota, "MQTT 3.1.1 has no reason codes")
		c.t.note(RuleDropReject, "MQTT 3.1.1 has no reason codes")
	}
	return m
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// now is the clock the checks use.
func (o Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}
