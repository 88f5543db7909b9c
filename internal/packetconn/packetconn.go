// Package packetconn shapes how MQTT clients' packets reach the network.
//
// [Conn] makes github.com/eclipse/paho.golang write each MQTT packet to its
// connection with one Write. paho.golang encodes a packet as several buffers
// (fixed header, variable header, properties, payload) and writes them one by
// one. On a *tls.Conn every Write is a TLS record and a write system call, so
// a PUBLISH costs three records, three syscalls at the sender and as many
// records to decrypt at the receiver. paho.golang locks its connection around
// a packet when the connection is a [sync.Locker] (that is what
// packets.NewThreadSafeConn provides); a [Conn] is such a Locker that collects
// the packet's buffers while locked and writes them as one when unlocked.
//
// [Batching] goes further for a connection that carries many packets in
// flight: it writes whatever packets were queued during the previous write
// as one.
package packetconn

import (
	"net"
	"sync"
)

// maxKept is the largest buffer kept between packets; a larger one (a big
// packet) is released after its write.
const maxKept = 16 << 10

// Conn is a net.Conn for paho.golang's ClientConfig.Conn. Writes are only
// valid between Lock and Unlock, which paho.golang's packet writer calls.
// The write happens in Unlock; if it fails, the connection is closed (so the
// client's reader sees the loss) and the error is returned by the next Write.
type Conn struct {
	net.Conn
	mu  sync.Mutex
	buf []byte
	err error
}

// New wraps c.
func New(c net.Conn) *Conn { return &Conn{Conn: c} }

// Lock starts a packet.
func (c *Conn) Lock() { c.mu.Lock() }

// Unlock writes the packet collected since Lock, in one Write.
func (c *Conn) Unlock() {
	if len(c.buf) > 0 && c.err == nil {
		if _, err := c.Conn.Write(c.buf); err != nil {
			c.err = err
			_ = c.Conn.Close()
		}
	}
	if cap(c.buf) > maxKept {
		c.buf = nil
	} else {
		c.buf = c.buf[:0]
	}
	c.mu.Unlock()
}

// Write adds b to the packet being collected. It must be called between
// Lock and Unlock.
func (c *Conn) Write(b []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	c.buf = append(c.buf, b...)
	return len(b), nil
}
