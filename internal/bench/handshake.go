package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// connectPacket is an MQTT 3.1.1 CONNECT with a clean session.
func connectPacket(clientID string, keepAlive uint16) []byte {
	n := 10 + 2 + len(clientID)
	if n > 127 {
		panic("bench: client ID too long for a one-byte remaining length")
	}
	b := []byte{0x10, byte(n), 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, byte(keepAlive >> 8), byte(keepAlive),
		byte(len(clientID) >> 8), byte(len(clientID))}
	return append(b, clientID...)
}

var disconnectPacket = []byte{0xe0, 0}

// mqttConnect opens one device connection: TCP, mutual TLS, CONNECT and a
// successful CONNACK. The CONNACK proves the gateway finished its side of
// the handshake (with TLS 1.3 the client is done a flight earlier).
func mqttConnect(ctx context.Context, addr string, tc *tls.Config, clientID string, keepAlive uint16) (*tls.Conn, error) {
	// Once started, a connection completes on its own 30 s deadline: the
	// end of a storm (ctx) does not cut it short and count it as failed.
	deadline := time.Now().Add(30 * time.Second)
	dctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	defer cancel()
	c, err := (&tls.Dialer{NetDialer: &net.Dialer{}, Config: tc}).DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	conn := c.(*tls.Conn)
	_ = conn.SetDeadline(deadline)
	if _, err := conn.Write(connectPacket(clientID, keepAlive)); err != nil {
		conn.Close()
		return nil, fmt.Errorf("write CONNECT: %w", err)
	}
	var ack [4]byte
	if _, err := io.ReadFull(conn, ack[:]); err != nil {
		conn.Close()
		return nil, fmt.Errorf("read CONNACK: %w", err)
	}
	if ack[0] != 0x20 || ack[1] != 2 || ack[3] != 0 {
		conn.Close()
		return nil, fmt.Errorf("CONNACK % x", ack)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

// StormResult counts the connections of a reconnect storm.
type StormResult struct {
	Connects uint64        // handshakes completed with a CONNACK
	Resumed  uint64        // of which resumed a TLS session
	Failed   uint64        // attempts that failed
	Elapsed  time.Duration //
	FirstErr string        // the first failure, if any
}

// PerSecond is the rate of completed connections.
func (r StormResult) PerSecond() float64 { return Rate(r.Connects, r.Elapsed) }

// Storm reconnects in a loop for d: one worker per identity in devs, each
// dialling, completing mutual TLS and MQTT CONNECT, then disconnecting. With
// resume each worker keeps its device's TLS session cache, so all but its
// first handshake can resume; without, every handshake is a full one.
func Storm(ctx context.Context, addr string, roots *x509.CertPool, devs []*Identity, resume bool, d time.Duration) StormResult {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var res StormResult
	var connects, resumed, failed atomic.Uint64
	var firstErr atomic.Pointer[string]
	var wg sync.WaitGroup
	start := time.Now()
	for _, id := range devs {
		tc := DeviceTLS(roots, id, resume)
		wg.Go(func() {
			for ctx.Err() == nil {
				c, err := mqttConnect(ctx, addr, tc, id.ID, 60)
				if err != nil {
					if ctx.Err() == nil {
						failed.Add(1)
						msg := err.Error()
						firstErr.CompareAndSwap(nil, &msg)
						time.Sleep(10 * time.Millisecond)
					}
					continue
				}
				connects.Add(1)
				if c.ConnectionState().DidResume {
					resumed.Add(1)
				}
				_, _ = c.Write(disconnectPacket)
				_ = c.Close()
			}
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Connects, res.Resumed, res.Failed = connects.Load(), resumed.Load(), failed.Load()
	if p := firstErr.Load(); p != nil {
		res.FirstErr = *p
	}
	return res
}

// IdleConns are device connections held open without traffic.
type IdleConns struct {
	conns []net.Conn
}

// Idle opens one connection per identity (MQTT 3.1.1, keepalive 0: the
// gateway imposes its own, minutes long), concurrency at a time, and holds
// them. progress (when not nil) gets the number open so far.
func Idle(ctx context.Context, addr string, roots *x509.CertPool, devs []*Identity, concurrency int, progress func(int)) (*IdleConns, error) {
	conns, err := connectAll(ctx, devs, concurrency, progress, func(id *Identity) (net.Conn, error) {
		return mqttConnect(ctx, addr, DeviceTLS(roots, id, false), id.ID, 0)
	})
	ic := &IdleConns{conns: conns}
	if err != nil {
		ic.Close()
		return nil, err
	}
	return ic, nil
}

// Len is the number of connections held.
func (ic *IdleConns) Len() int {
	n := 0
	for _, c := range ic.conns {
		if c != nil {
			n++
		}
	}
	return n
}

// Close disconnects them all.
func (ic *IdleConns) Close() {
	for i, c := range ic.conns {
		if c != nil {
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = c.Write(disconnectPacket)
			_ = c.Close()
			ic.conns[i] = nil
		}
	}
}
