package fleet

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"syscall"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/vitalgate/vitalgate/internal/packetconn"
)

// client is one MQTT connection of a device, 3.1.1 or 5.
type client interface {
	// publish sends one message. For QoS 1 it waits for the PUBACK and
	// returns its reason code (always 0 with MQTT 3.1.1); err is a transport
	// failure or a timeout, after which the message's fate is unknown.
	publish(ctx context.Context, topic string, qos byte, payload []byte) (code byte, err error)
	// lost is closed when the connection ends.
	lost() <-chan struct{}
	close()
}

// connectError is a failed connection attempt, classified for the counters.
type connectError struct {
	stage string // "dial", "tls" (handshake refused), "connack", "mqtt"
	code  byte   // CONNACK reason code for stage "connack"
	err   error
}

func (e *connectError) Error() string {
	if e.stage == "connack" {
		return fmt.Sprintf("connack 0x%02x: %v", e.code, e.err)
	}
	return e.stage + ": " + e.err.Error()
}

func (e *connectError) Unwrap() error { return e.err }

// alertConn remembers a TLS alert read from the server. With TLS 1.3 a
// server that refuses the client certificate says so after the client's
// handshake is complete, on the first read: the MQTT library then only sees
// a failed CONNECT, and this tells a refused certificate from other failures.
type alertConn struct {
	net.Conn
	mu    sync.Mutex
	alert error
	hold  bool // Close is put off (while the MQTT library connects)
	held  bool // Close was called while put off
}

// Close closes the connection, or, while hold is set, notes the request.
func (c *alertConn) Close() error {
	c.mu.Lock()
	if c.hold {
		c.held = true
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	return c.Conn.Close()
}

// holdClose puts off Close (on) or ends that (off), closing then if Close
// was called meanwhile.
func (c *alertConn) holdClose(on bool) {
	c.mu.Lock()
	c.hold = on
	closeNow := !on && c.held
	c.held = false
	c.mu.Unlock()
	if closeNow {
		_ = c.Conn.Close()
	}
}

func (c *alertConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil && isTLSAlert(err) {
		c.mu.Lock()
		if c.alert == nil {
			c.alert = err
		}
		c.mu.Unlock()
	}
	return n, err
}

func (c *alertConn) tlsAlert() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.alert
}

// isTLSAlert reports whether err is an alert sent by the TLS peer.
func isTLSAlert(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" {
		return true
	}
	var ae tls.AlertError
	return errors.As(err, &ae)
}

// dialTLS opens a TCP connection to addr and completes the TLS handshake.
func dialTLS(ctx context.Context, addr string, tc *tls.Config, timeout time.Duration) (*alertConn, error) {
	d := net.Dialer{Timeout: timeout}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &connectError{stage: "dial", err: err}
	}
	c := tls.Client(raw, tc)
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := c.HandshakeContext(hctx); err != nil {
		_ = raw.Close()
		stage := "dial"
		if isTLSAlert(err) {
			stage = "tls"
		}
		return nil, &connectError{stage: stage, err: err}
	}
	return &alertConn{Conn: c}, nil
}

// refused turns a failed MQTT connect over conn into a connectError, noting
// a TLS alert the server sent.
func refused(conn *alertConn, err error) error {
	if conn.tlsAlert() == nil {
		// The CONNECT write can fail (broken pipe) before the alert is read:
		// read what the server sent before it closed.
		_ = conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		var b [1]byte
		_, _ = conn.Read(b[:])
	}
	if a := conn.tlsAlert(); a != nil {
		return &connectError{stage: "tls", err: a}
	}
	var ce *connectError
	if errors.As(err, &ce) {
		return err
	}
	return &connectError{stage: "mqtt", err: err}
}

// dialOptions are what a connection needs besides the device.
type dialOptions struct {
	addr       string
	tls        *tls.Config
	clientID   string
	v5         bool
	timeout    time.Duration // dial, handshake and CONNACK
	ackTimeout time.Duration // PUBACK
	keepAlive  uint16        // seconds
	// onCommand, when set, receives the payloads of the device's update
	// commands: the connection subscribes to cmdTopic before it is handed
	// over, so that nothing sent after the device's first message is lost.
	cmdTopic  string
	onCommand func(payload []byte)
}

// dialClient connects one device.
func dialClient(ctx context.Context, o dialOptions) (client, error) {
	conn, err := dialTLS(ctx, o.addr, o.tls, o.timeout)
	if err != nil {
		return nil, err
	}
	if o.v5 {
		return dial5(ctx, conn, o)
	}
	return dial3(conn, o)
}

// --- MQTT 5: github.com/eclipse/paho.golang ---

type client5 struct {
	c *paho.Client
}

var receiveMaximum uint16 = 16

func dial5(ctx context.Context, conn *alertConn, o dialOptions) (client, error) {
	cfg := paho.ClientConfig{
		ClientID:      o.clientID,
		Conn:          packetconn.New(conn),
		PacketTimeout: o.ackTimeout,
	}
	if o.onCommand != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(p paho.PublishReceived) (bool, error) {
			if p.Packet.Topic == o.cmdTopic {
				o.onCommand(p.Packet.Payload)
			}
			return true, nil
		}}
	}
	c := paho.NewClient(cfg)
	cctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	conn.holdClose(true) // paho closes the connection on failure: keep it to read a TLS alert
	ca, err := c.Connect(cctx, &paho.Connect{
		ClientID:   o.clientID,
		KeepAlive:  o.keepAlive,
		CleanStart: true,
		// Devices subscribe to nothing; without this paho sizes its inbound
		// queue for 65,535 messages (512 KiB per client).
		Properties: &paho.ConnectProperties{ReceiveMaximum: &receiveMaximum},
	})
	if err != nil {
		if ca != nil && ca.ReasonCode >= 0x80 {
			err = &connectError{stage: "connack", code: ca.ReasonCode, err: err}
		} else {
			err = refused(conn, err)
		}
		conn.holdClose(false)
		_ = conn.Close()
		return nil, err
	}
	conn.holdClose(false)
	if o.onCommand != nil {
		sctx, cancel := context.WithTimeout(ctx, o.timeout)
		defer cancel()
		if _, err := c.Subscribe(sctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: o.cmdTopic, QoS: 1}}}); err != nil {
			_ = c.Disconnect(&paho.Disconnect{})
			return nil, &connectError{stage: "mqtt", err: fmt.Errorf("subscribe %s: %w", o.cmdTopic, err)}
		}
	}
	return &client5{c: c}, nil
}

func (c *client5) publish(ctx context.Context, topic string, qos byte, payload []byte) (byte, error) {
	resp, err := c.c.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Payload: payload})
	if resp != nil && (err == nil || resp.ReasonCode >= 0x80) {
		return resp.ReasonCode, nil // a reason code >= 0x80 is a verdict, not a failure
	}
	if err != nil {
		return 0, err
	}
	return 0, nil
}

func (c *client5) lost() <-chan struct{} { return c.c.Done() }

func (c *client5) close() {
	_ = c.c.Disconnect(&paho.Disconnect{ReasonCode: 0})
}

// --- MQTT 3.1.1: github.com/eclipse/paho.mqtt.golang ---

type client3 struct {
	c          mqtt3.Client
	ackTimeout time.Duration
	done       chan struct{}
	once       sync.Once
}

func dial3(conn *alertConn, o dialOptions) (client, error) {
	c3 := &client3{ackTimeout: o.ackTimeout, done: make(chan struct{})}
	used := false
	opts := mqtt3.NewClientOptions().
		AddBroker("tcp://" + o.addr). // the connection is ours: see the open function
		SetClientID(o.clientID).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetOrderMatters(false).
		SetKeepAlive(time.Duration(o.keepAlive) * time.Second).
		SetPingTimeout(o.timeout).
		SetConnectTimeout(o.timeout).
		SetWriteTimeout(o.timeout).
		SetConnectionLostHandler(func(mqtt3.Client, error) { c3.markLost() }).
		SetCustomOpenConnectionFn(func(*url.URL, mqtt3.ClientOptions) (net.Conn, error) {
			if used {
				return nil, errors.New("connection already used")
			}
			used = true
			return conn, nil
		})
	c3.c = mqtt3.NewClient(opts)
	tok := c3.c.Connect()
	if !tok.WaitTimeout(o.timeout + time.Second) {
		_ = conn.Close()
		return nil, &connectError{stage: "mqtt", err: errors.New("no CONNACK")}
	}
	if err := tok.Error(); err != nil {
		if ct, ok := tok.(*mqtt3.ConnectToken); ok && ct.ReturnCode() >= 1 && ct.ReturnCode() <= 5 && conn.tlsAlert() == nil {
			_ = conn.Close()
			return nil, &connectError{stage: "connack", code: ct.ReturnCode(), err: err}
		}
		err = refused(conn, err)
		_ = conn.Close()
		return nil, err
	}
	if o.onCommand != nil {
		tok := c3.c.Subscribe(o.cmdTopic, 1, func(_ mqtt3.Client, m mqtt3.Message) { o.onCommand(m.Payload()) })
		if !tok.WaitTimeout(o.timeout) || tok.Error() != nil {
			c3.close()
			return nil, &connectError{stage: "mqtt", err: fmt.Errorf("subscribe %s: %v", o.cmdTopic, tok.Error())}
		}
	}
	return c3, nil
}

func (c *client3) markLost() { c.once.Do(func() { close(c.done) }) }

func (c *client3) publish(ctx context.Context, topic string, qos byte, payload []byte) (byte, error) {
	tok := c.c.Publish(topic, qos, false, payload)
	t := time.NewTimer(c.ackTimeout)
	defer t.Stop()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-t.C:
		return 0, errAckTimeout
	}
	if err := tok.Error(); err != nil {
		return 0, err
	}
	return 0, nil
}

func (c *client3) lost() <-chan struct{} { return c.done }

func (c *client3) close() {
	c.c.Disconnect(100)
	c.markLost()
}

var errAckTimeout = errors.New("no PUBACK in time")

// errnoText is the short text of the system error inside err ("connection
// refused"), or err's own text.
func errnoText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	var ce *connectError
	if errors.As(err, &ce) {
		return ce.err.Error()
	}
	return err.Error()
}
