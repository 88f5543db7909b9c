package packetconn

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"testing"

	"github.com/eclipse/paho.golang/packets"
)

// recorder is a net.Conn that records each Write.
type recorder struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
	fail   error
	closed bool
}

func (r *recorder) Write(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return 0, r.fail
	}
	r.writes = append(r.writes, bytes.Clone(b))
	return len(b), nil
}

func (r *recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	return nil
}

func publish(id uint16, payload []byte) *packets.Publish {
	return &packets.Publish{Topic: "vg/site1/dev1/telemetry", QoS: 1, PacketID: id, Payload: payload}
}

func TestOneWritePerPacket(t *testing.T) {
	var plain recorder
	if _, err := publish(7, []byte("signed record")).WriteTo(&plain); err != nil {
		t.Fatal(err)
	}
	if len(plain.writes) < 3 {
		t.Fatalf("paho wrote a PUBLISH in %d writes; this package assumes several", len(plain.writes))
	}
	want := bytes.Join(plain.writes, nil)

	rec := &recorder{}
	c := New(rec)
	if _, err := publish(7, []byte("signed record")).WriteTo(c); err != nil {
		t.Fatal(err)
	}
	if len(rec.writes) != 1 || !bytes.Equal(rec.writes[0], want) {
		t.Fatalf("writes %q, want one write %q", rec.writes, want)
	}
	// Packets of other kinds, and packets in a row, one write each.
	if _, err := packets.NewControlPacket(packets.PINGREQ).WriteTo(c); err != nil {
		t.Fatal(err)
	}
	if _, err := (&packets.Puback{PacketID: 9}).WriteTo(c); err != nil {
		t.Fatal(err)
	}
	if len(rec.writes) != 3 || !bytes.Equal(rec.writes[1], []byte{0xc0, 0}) {
		t.Fatalf("writes %x, want 3 with a PINGREQ second", rec.writes)
	}
}

func TestConcurrentPacketsStayWhole(t *testing.T) {
	rec := &recorder{}
	c := New(rec)
	var wg sync.WaitGroup
	const writers, each = 4, 50
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				p := publish(uint16(w*each+i+1), bytes.Repeat([]byte{byte(w)}, 100+w))
				if _, err := p.WriteTo(c); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if len(rec.writes) != writers*each {
		t.Fatalf("%d writes, want %d", len(rec.writes), writers*each)
	}
	for _, b := range rec.writes {
		cp, err := packets.ReadPacket(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("write %x is not one whole packet: %v", b, err)
		}
		if p, ok := cp.Content.(*packets.Publish); !ok || len(p.Payload) < 100 {
			t.Fatalf("write decoded as %v", cp)
		}
	}
}

func TestWriteFailureClosesAndSticks(t *testing.T) {
	boom := errors.New("broken pipe")
	rec := &recorder{fail: boom}
	c := New(rec)
	// The packet's own WriteTo cannot see the failure (it happens in Unlock)...
	_, _ = publish(1, []byte("x")).WriteTo(c)
	if !rec.closed {
		t.Fatal("connection not closed after a failed write")
	}
	// ...the next packet does.
	if _, err := publish(2, []byte("y")).WriteTo(c); !errors.Is(err, boom) {
		t.Fatalf("next write: %v, want %v", err, boom)
	}
}

func TestLargePacketBufferReleased(t *testing.T) {
	rec := &recorder{}
	c := New(rec)
	if _, err := publish(1, make([]byte, 64<<10)).WriteTo(c); err != nil {
		t.Fatal(err)
	}
	if c.buf != nil {
		t.Fatalf("kept a %d-byte buffer after a large packet", cap(c.buf))
	}
	if _, err := publish(2, []byte("small")).WriteTo(c); err != nil {
		t.Fatal(err)
	}
	if cap(c.buf) == 0 || cap(c.buf) > maxKept {
		t.Fatalf("buffer of %d bytes kept after a small packet", cap(c.buf))
	}
}
