package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"golang.org/x/time/rate"

	"github.com/vitalgate/vitalgate/internal/packetconn"
)

// Devices is a connected fleet: one MQTT 5 client per device over mutual
// TLS.
type Devices struct {
	ids     []*Identity
	index   map[string]int
	clients []*paho.Client
	close   sync.Once

	// counters of the current and past drives
	sent, acked, rejected, failed atomic.Uint64
	track                         atomic.Pointer[tracker]
	acks                          atomic.Pointer[Latencies] // PUBLISH to PUBACK, while measuring
}

// MeasureAcks starts (on) or stops sampling the time from each PUBLISH to
// its PUBACK 0x00: the gateway's part of the latency, durable store included.
func (d *Devices) MeasureAcks(on bool, l *Latencies) {
	if on {
		l.Reset()
		d.acks.Store(l)
	} else {
		d.acks.Store(nil)
	}
}

// tracker maps a message ID "{dev}:{seq}" of the current drive to the time
// its PUBLISH was written.
type tracker struct {
	first []uint64         // seq of msgs[i][0]
	at    [][]atomic.Int64 // UnixNano before Publish; 0: not sent
}

func newTracker(msgs [][]Msg) *tracker {
	t := &tracker{first: make([]uint64, len(msgs)), at: make([][]atomic.Int64, len(msgs))}
	for i, m := range msgs {
		if len(m) > 0 {
			t.first[i] = m[0].Seq
		}
		t.at[i] = make([]atomic.Int64, len(m))
	}
	return t
}

// DeviceTLS is the client configuration of one device: its certificate,
// trust in roots, server name localhost, and, with resume, its own session
// cache (a shared cache would let a device resume another's session).
func DeviceTLS(roots *x509.CertPool, id *Identity, resume bool) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: "localhost",
		Certificates: []tls.Certificate{id.TLS}}
	if resume {
		c.ClientSessionCache = tls.NewLRUClientSessionCache(1)
	}
	return c
}

// Connect connects every device to addr, concurrency at a time, and calls
// progress (when not nil) with the number connected so far. It fails if any
// device cannot connect.
func Connect(ctx context.Context, addr string, roots *x509.CertPool, devs []*Identity, concurrency int, progress func(int)) (*Devices, error) {
	d := &Devices{ids: devs, index: make(map[string]int, len(devs))}
	for i, id := range devs {
		d.index[id.ID] = i
	}
	clients, err := connectAll(ctx, devs, concurrency, progress, func(id *Identity) (*paho.Client, error) {
		return dial5(ctx, addr, DeviceTLS(roots, id, false), id.ID)
	})
	d.clients = clients
	if err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// connectAll dials one connection per identity, concurrency at a time, and
// calls progress (when not nil) with the number made so far. The result has
// the connection of devs[i] at i (the zero value where dialling failed); the
// error names the first failures.
func connectAll[T any](ctx context.Context, devs []*Identity, concurrency int, progress func(int), dial func(*Identity) (T, error)) ([]T, error) {
	out := make([]T, len(devs))
	var (
		next, made atomic.Int64
		wg         sync.WaitGroup
		mu         sync.Mutex
		errs       []error
		failed     int
	)
	for range max(1, concurrency) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(devs) {
					return
				}
				c, err := dial(devs[i])
				if err != nil {
					mu.Lock()
					if failed++; len(errs) < 5 {
						errs = append(errs, fmt.Errorf("connect %s: %w", devs[i].ID, err))
					}
					mu.Unlock()
					continue
				}
				out[i] = c
				if n := made.Add(1); progress != nil {
					progress(int(n))
				}
			}
		})
	}
	wg.Wait()
	if failed > len(errs) {
		errs = append(errs, fmt.Errorf("and %d more connections failed", failed-len(errs)))
	}
	return out, errors.Join(append(errs, ctx.Err())...)
}

var receiveMaximum uint16 = 16

func dial5(ctx context.Context, addr string, tc *tls.Config, clientID string) (*paho.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := (&tls.Dialer{NetDialer: &net.Dialer{}, Config: tc}).DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := paho.NewClient(paho.ClientConfig{Conn: packetconn.New(conn), PacketTimeout: 30 * time.Second})
	ack, err := c.Connect(dctx, &paho.Connect{ClientID: clientID, KeepAlive: 120, CleanStart: true,
		Properties: &paho.ConnectProperties{ReceiveMaximum: &receiveMaximum}})
	if err != nil {
		conn.Close()
		if ack != nil {
			return nil, fmt.Errorf("CONNACK 0x%02x: %w", ack.ReasonCode, err)
		}
		return nil, err
	}
	return c, nil
}

// Close disconnects every device. Safe to call twice.
func (d *Devices) Close() {
	d.close.Do(func() {
		var wg sync.WaitGroup
		for _, c := range d.clients {
			if c != nil {
				wg.Go(func() { _ = c.Disconnect(&paho.Disconnect{}) })
			}
		}
		wg.Wait()
	})
}

// Counts is a snapshot of what the fleet has sent and had answered.
type Counts struct {
	Sent     uint64 // PUBLISH written
	Acked    uint64 // PUBACK 0x00
	Rejected uint64 // PUBACK with a reason code >= 0x80
	Failed   uint64 // no PUBACK (timeout, connection lost)
}

// Counts reads the counters.
func (d *Devices) Counts() Counts {
	return Counts{Sent: d.sent.Load(), Acked: d.acked.Load(), Rejected: d.rejected.Load(), Failed: d.failed.Load()}
}

// Drive publishes msgs[i] from device i, QoS 1, one at a time per device
// (so seq order holds), until every message is answered, ctx is done or
// stop is closed. With total > 0 the fleet's sends are paced to total
// messages per second; otherwise each device sends as fast as its PUBACKs
// come. Send times are kept for [Devices.Latency] until the next Drive.
func (d *Devices) Drive(ctx context.Context, msgs [][]Msg, total float64, stop <-chan struct{}) {
	t := newTracker(msgs)
	d.track.Store(t)
	var lim *rate.Limiter
	if total > 0 {
		lim = rate.NewLimiter(rate.Limit(total), max(1, int(total/100)))
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if stop != nil {
		go func() {
			select {
			case <-stop:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	var wg sync.WaitGroup
	for i, c := range d.clients {
		if i >= len(msgs) {
			break
		}
		topic := "devices/" + d.ids[i].ID + "/telemetry"
		wg.Go(func() {
			for j, m := range msgs[i] {
				if lim != nil {
					if err := lim.Wait(ctx); err != nil {
						return
					}
				}
				if ctx.Err() != nil {
					return
				}
				sent := time.Now()
				t.at[i][j].Store(sent.UnixNano())
				d.sent.Add(1)
				r, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: m.Payload})
				switch {
				case r != nil && r.ReasonCode >= 0x80:
					d.rejected.Add(1)
				case err != nil:
					if ctx.Err() == nil {
						d.failed.Add(1)
					}
					return // the connection's fate is unknown: this device stops
				default:
					d.acked.Add(1)
					if l := d.acks.Load(); l != nil {
						l.Add(time.Since(sent))
					}
				}
			}
		})
	}
	wg.Wait()
}

// Latency is the time since the PUBLISH of message id ("{dev}:{seq}") of
// the current drive, false if it is not one of them or was not sent.
func (d *Devices) Latency(id string, now time.Time) (time.Duration, bool) {
	t := d.track.Load()
	if t == nil {
		return 0, false
	}
	dev, seqText, ok := strings.Cut(id, ":")
	if !ok {
		return 0, false
	}
	i, ok := d.index[dev]
	if !ok || i >= len(t.at) {
		return 0, false
	}
	seq, err := strconv.ParseUint(seqText, 10, 64)
	if err != nil || seq < t.first[i] || seq-t.first[i] >= uint64(len(t.at[i])) {
		return 0, false
	}
	at := t.at[i][seq-t.first[i]].Load()
	if at == 0 {
		return 0, false
	}
	return now.Sub(time.Unix(0, at)), true
}
