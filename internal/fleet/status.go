package fleet

import (
	"context"
	"time"

	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/telemetry"
)

func statusTopic(id string) string { return "devices/" + id + "/status" }

// reportStatus puts a status record in the buffer: the device's model and
// firmware, with rep's job state (nil: the last finished job's). It takes
// the next seq, so it goes behind the backlog: seqs must reach the gateway
// in order.
func (r *runner) reportStatus(rep *report) {
	if r.up == nil {
		return
	}
	if err := r.seqs.ensure(r.dev.Seq() + 1); err != nil {
		r.f.log.Error("status", "device", r.id, "err", err)
		return
	}
	st := r.up.status(rep)
	r.dev.seq++
	st.Seq, st.TS = r.dev.seq, time.Now().UnixMilli()
	b, err := telemetry.EncodeStatus(&st)
	if err == nil {
		b, err = envelope.Sign(r.key, r.id, b)
	}
	if err != nil {
		r.f.log.Error("status", "device", r.id, "err", err)
		return
	}
	r.nextID++
	e := &entry{id: r.nextID, topic: statusTopic(r.id), payload: b, status: true}
	r.f.ctr.buffered.Add(1)
	r.pending = append(r.pending, e)
}

// reportUpdate reports a job state; after an install the device
// reconnects, and its status at the connect carries the new firmware and
// the job's outcome.
func (r *runner) reportUpdate(ctx context.Context, rep report) {
	if !rep.reconnect {
		r.reportStatus(&rep)
		return
	}
	r.disconnect()
	r.link.stopRetry()
	if !r.link.connecting {
		r.connect(ctx)
	}
}
