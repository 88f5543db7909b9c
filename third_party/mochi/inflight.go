// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2023 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

package mqtt

import (
	"sort"
	"sync"
	"sync/atomic"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Inflight is a map of InflightMessage keyed on packet id.
//
// VitalGate patch (see PATCHES.md): an outbound QoS 1/2 message that cannot
// be sent for want of the client's send quota (its Receive Maximum) is kept
// as pending, with its own expiry intact, instead of being marked with
// Expiry -1; pending messages are sent in the order they were added as the
// client acknowledges (TakeNextPending), and every method takes the lock
// once (NextImmediate called GetAll under the read lock it already held,
// which deadlocks as soon as a writer waits in between).
type Inflight struct {
	sync.RWMutex
	internal            map[uint16]packets.Packet // internal contains the inflight packets
	order               map[uint16]uint64         // when each packet was added, for FIFO order
	pending             map[uint16]struct{}       // packets not sent yet, waiting for send quota
	next                uint64                    // the next order number
	npending            int32                     // len(pending), read without the lock
	receiveQuota        int32                     // remaining inbound qos quota for flow control
	sendQuota           int32                     // remaining outbound qos quota for flow control
	maximumReceiveQuota int32                     // maximum allowed receive quota
	maximumSendQuota    int32                     // maximum allowed send quota
}

// NewInflights returns a new instance of an Inflight packets map.
func NewInflights() *Inflight {
	return &Inflight{
		internal: map[uint16]packets.Packet{},
		order:    map[uint16]uint64{},
		pending:  map[uint16]struct{}{},
	}
}

// Set adds or updates an inflight packet by packet id.
func (i *Inflight) Set(m packets.Packet) bool {
	i.Lock()
	defer i.Unlock()
	return i.set(m)
}

// set adds or updates m; called with the lock held.
func (i *Inflight) set(m packets.Packet) bool {
	_, ok := i.internal[m.PacketID]
	i.internal[m.PacketID] = m
	if !ok {
		i.next++
		i.order[m.PacketID] = i.next
	}
	return !ok
}

// SetPending adds or updates an outbound packet that waits for send quota
// before it is written; it reports whether the packet was new.
func (i *Inflight) SetPending(m packets.Packet) bool {
	i.Lock()
	defer i.Unlock()
	added := i.set(m)
	i.markPending(m.PacketID)
	return added
}

// markPending marks id as not sent; called with the lock held.
func (i *Inflight) markPending(id uint16) {
	if _, ok := i.pending[id]; !ok {
		i.pending[id] = struct{}{}
		atomic.AddInt32(&i.npending, 1)
	}
}

// unmarkPending clears id's pending mark; called with the lock held.
func (i *Inflight) unmarkPending(id uint16) {
	if _, ok := i.pending[id]; ok {
		delete(i.pending, id)
		atomic.AddInt32(&i.npending, -1)
	}
}

// HasPending reports whether any packet waits for send quota.
func (i *Inflight) HasPending() bool {
	return atomic.LoadInt32(&i.npending) > 0
}

// TakeNextPending returns the oldest pending packet and marks it as sent
// (in flight, awaiting its acknowledgement).
func (i *Inflight) TakeNextPending() (packets.Packet, bool) {
	i.Lock()
	defer i.Unlock()
	var (
		best  uint16
		first uint64
		found bool
	)
	for id := range i.pending {
		if o := i.order[id]; !found || o < first {
			best, first, found = id, o, true
		}
	}
	if !found {
		return packets.Packet{}, false
	}
	i.unmarkPending(best)
	return i.internal[best], true
}

// IsPending reports whether id waits for send quota.
func (i *Inflight) IsPending(id uint16) bool {
	i.RLock()
	defer i.RUnlock()
	_, ok := i.pending[id]
	return ok
}

// PendAll marks every outbound QoS 1/2 PUBLISH pending, in the order it was
// added, with DUP set on those sent before: a session taken over resends
// them through the pending path (VitalGate patch).
func (i *Inflight) PendAll() {
	i.Lock()
	defer i.Unlock()
	for id, pk := range i.internal {
		if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos == 0 {
			continue
		}
		if _, p := i.pending[id]; !p {
			pk.FixedHeader.Dup = true // [MQTT-3.3.1-1] [MQTT-3.3.1-3]
			i.internal[id] = pk
			i.markPending(id)
		}
	}
}

// SendQuota is the remaining send quota (for tests and metrics).
func (i *Inflight) SendQuota() int32 { return atomic.LoadInt32(&i.sendQuota) }

// DeletePending removes a message and reports whether it existed and
// whether it was still pending, in one step (VitalGate patch: the expiry
// loop returns the send quota of a message that was sent).
func (i *Inflight) DeletePending(id uint16) (existed, wasPending bool) {
	i.Lock()
	defer i.Unlock()
	_, existed = i.internal[id]
	_, wasPending = i.pending[id]
	delete(i.internal, id)
	delete(i.order, id)
	i.unmarkPending(id)
	return existed, wasPending
}

// Unpend clears the pending mark of id and reports whether it was pending.
func (i *Inflight) Unpend(id uint16) bool {
	i.Lock()
	defer i.Unlock()
	_, ok := i.pending[id]
	i.unmarkPending(id)
	return ok
}

// ReturnPending marks a packet taken with TakeNextPending as pending again
// (it could not be handed to the writer).
func (i *Inflight) ReturnPending(id uint16) {
	i.Lock()
	defer i.Unlock()
	if _, ok := i.internal[id]; ok {
		i.markPending(id)
	}
}

// Get returns an inflight packet by packet id.
func (i *Inflight) Get(id uint16) (packets.Packet, bool) {
	i.RLock()
	defer i.RUnlock()

	if m, ok := i.internal[id]; ok {
		return m, true
	}

	return packets.Packet{}, false
}

// Len returns the size of the inflight messages map.
func (i *Inflight) Len() int {
	i.RLock()
	defer i.RUnlock()
	return len(i.internal)
}

// Clone returns a new instance of Inflight with the same message data.
// This is used when transferring inflights from a taken-over session.
func (i *Inflight) Clone() *Inflight {
	c := NewInflights()
	i.RLock()
	defer i.RUnlock()
	for k, v := range i.internal {
		c.internal[k] = v
		c.order[k] = i.order[k]
	}
	for k := range i.pending {
		c.pending[k] = struct{}{}
	}
	c.next = i.next
	c.npending = int32(len(c.pending))
	return c
}

// GetAll returns all the inflight messages in the order they were added;
// with immediate, only the pending ones.
func (i *Inflight) GetAll(immediate bool) []packets.Packet {
	i.RLock()
	defer i.RUnlock()
	return i.getAll(immediate)
}

// getAll is GetAll; called with the lock held.
func (i *Inflight) getAll(immediate bool) []packets.Packet {
	m := []packets.Packet{}
	for id, v := range i.internal {
		if _, p := i.pending[id]; !immediate || p {
			m = append(m, v)
		}
	}

	sort.Slice(m, func(a, b int) bool {
		return i.order[m[a].PacketID] < i.order[m[b].PacketID]
	})

	return m
}

// NextImmediate returns the oldest pending packet without taking it.
func (i *Inflight) NextImmediate() (packets.Packet, bool) {
	i.RLock()
	defer i.RUnlock()

	m := i.getAll(true)
	if len(m) > 0 {
		return m[0], true
	}

	return packets.Packet{}, false
}

// Delete removes an in-flight message from the map. Returns true if the message existed.
func (i *Inflight) Delete(id uint16) bool {
	i.Lock()
	defer i.Unlock()

	_, ok := i.internal[id]
	delete(i.internal, id)
	delete(i.order, id)
	i.unmarkPending(id)

	return ok
}

// TakeSendQuota takes one unit of send quota, if there is one.
func (i *Inflight) TakeSendQuota() bool {
	for {
		q := atomic.LoadInt32(&i.sendQuota)
		if q <= 0 {
			return false
		}
		if atomic.CompareAndSwapInt32(&i.sendQuota, q, q-1) {
			return true
		}
	}
}

// FlowControlled reports whether the client limits its in-flight messages
// (a Receive Maximum): without one, nothing waits for send quota.
func (i *Inflight) FlowControlled() bool {
	return atomic.LoadInt32(&i.maximumSendQuota) > 0
}

// TakeRecieveQuota reduces the receive quota by 1.
func (i *Inflight) DecreaseReceiveQuota() {
	if atomic.LoadInt32(&i.receiveQuota) > 0 {
		atomic.AddInt32(&i.receiveQuota, -1)
	}
}

// TakeRecieveQuota increases the receive quota by 1.
func (i *Inflight) IncreaseReceiveQuota() {
	if atomic.LoadInt32(&i.receiveQuota) < atomic.LoadInt32(&i.maximumReceiveQuota) {
		atomic.AddInt32(&i.receiveQuota, 1)
	}
}

// ResetReceiveQuota resets the receive quota to the maximum allowed value.
func (i *Inflight) ResetReceiveQuota(n int32) {
	atomic.StoreInt32(&i.receiveQuota, n)
	atomic.StoreInt32(&i.maximumReceiveQuota, n)
}

// DecreaseSendQuota reduces the send quota by 1.
func (i *Inflight) DecreaseSendQuota() {
	if atomic.LoadInt32(&i.sendQuota) > 0 {
		atomic.AddInt32(&i.sendQuota, -1)
	}
}

// IncreaseSendQuota increases the send quota by 1, up to its maximum.
func (i *Inflight) IncreaseSendQuota() {
	for {
		q := atomic.LoadInt32(&i.sendQuota)
		if q >= atomic.LoadInt32(&i.maximumSendQuota) || atomic.CompareAndSwapInt32(&i.sendQuota, q, q+1) {
			return
		}
	}
}

// ResetSendQuota resets the send quota to the maximum allowed value.
func (i *Inflight) ResetSendQuota(n int32) {
	atomic.StoreInt32(&i.sendQuota, n)
	atomic.StoreInt32(&i.maximumSendQuota, n)
}
