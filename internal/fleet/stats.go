package fleet

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/vitalgate/vitalgate/internal/verdict"
)

// Stats is a snapshot of a running fleet.
type Stats struct {
	Elapsed       time.Duration     `json:"-"`
	ElapsedS      float64           `json:"elapsed_s"`
	Devices       int               `json:"devices"`
	Connected     int               `json:"connected"`      // devices connected now
	Connects      uint64            `json:"connects"`       // successful connections, reconnects included
	ConnectErrors uint64            `json:"connect_errors"` // failed attempts (TLS refusals included)
	TLSRefused    uint64            `json:"tls_refused"`    // handshakes the gateway refused (TLS alert)
	Connacks      map[string]uint64 `json:"connack_codes,omitempty"`
	Generated     uint64            `json:"generated"`              // records made
	Sent          uint64            `json:"sent"`                   // PUBLISH packets written, resends included
	Resent        uint64            `json:"resent"`                 // of which resends after a lost connection
	Acked         uint64            `json:"acked"`                  // PUBACK 0x00 (any PUBACK with MQTT 3.1.1)
	Rejected      map[string]uint64 `json:"rejected"`               // by expected verdict (attack messages with the matching code), else by code
	Codes         map[string]uint64 `json:"codes"`                  // every PUBACK reason code, "0x00" included
	Duplicates    uint64            `json:"duplicates"`             // resends answered replay: stored before the ack was lost
	Dropped       uint64            `json:"dropped"`                // records dropped from a full buffer
	Buffered      int64             `json:"buffered"`               // records waiting to be sent or acknowledged
	Errors        uint64            `json:"errors"`                 // publishes without an answer (timeout, connection lost)
	Enrolments    uint64            `json:"enrolments,omitempty"`   // certificates got with a factory identity (EST simpleenroll)
	Renewals      uint64            `json:"renewals,omitempty"`     // certificates renewed (EST simplereenroll)
	EnrolErrors   uint64            `json:"enrol_errors,omitempty"` // failed enrolments and renewals
	Statuses      uint64            `json:"statuses,omitempty"`     // status records acknowledged (not counted as records)
	StatusRefused uint64            `json:"status_refused,omitempty"`
	MsgRate       float64           `json:"msg_per_s"` // answered messages per second, recent
	P50           time.Duration     `json:"-"`
	P99           time.Duration     `json:"-"`
	P50MS         float64           `json:"p50_ms"` // PUBLISH to PUBACK
	P99MS         float64           `json:"p99_ms"`
}

// String is the one-line progress display:
// "connected 50/50 sent 1200 acked 1190 rejected 10 (bad_signature:10) | 398 msg/s p50 2.1ms p99 8.0ms".
func (s Stats) String() string {
	var b strings.Builder
	var rejected uint64
	for _, n := range s.Rejected {
		rejected += n
	}
	fmt.Fprintf(&b, "connected %d/%d sent %d acked %d rejected %d", s.Connected, s.Devices, s.Sent, s.Acked, rejected)
	for i, k := range sortedKeys(s.Rejected) {
		sep := " "
		if i == 0 {
			sep = " ("
		}
		fmt.Fprintf(&b, "%s%s:%d", sep, k, s.Rejected[k])
	}
	if rejected > 0 {
		b.WriteByte(')')
	}
	fmt.Fprintf(&b, " | %.0f msg/s p50 %s p99 %s", s.MsgRate, ms(s.P50), ms(s.P99))
	if s.Buffered > 0 {
		fmt.Fprintf(&b, " buffered %d", s.Buffered)
	}
	if s.Dropped > 0 {
		fmt.Fprintf(&b, " dropped %d", s.Dropped)
	}
	if s.ConnectErrors > 0 {
		fmt.Fprintf(&b, " connect_errors %d", s.ConnectErrors)
	}
	if s.TLSRefused > 0 {
		fmt.Fprintf(&b, " tls_refused %d", s.TLSRefused)
	}
	if s.Enrolments+s.Renewals+s.EnrolErrors > 0 {
		fmt.Fprintf(&b, " | enrolled %d renewed %d", s.Enrolments, s.Renewals)
		if s.EnrolErrors > 0 {
			fmt.Fprintf(&b, " enrol_errors %d", s.EnrolErrors)
		}
	}
	return b.String()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// AttackReport is the outcome of an attack run.
type AttackReport struct {
	Mode      string            `json:"mode"`
	Attackers int               `json:"attackers"`
	Expected  string            `json:"expected"`                // the verdict (or tls_refused) each attack message must get
	Code      string            `json:"code,omitempty"`          // its MQTT 5 reason code
	Sent      uint64            `json:"sent"`                    // attack messages answered (or connection attempts, for revoked)
	Matched   uint64            `json:"matched"`                 // answered with the expected code (or refused, for revoked)
	Codes     map[string]uint64 `json:"codes,omitempty"`         // reason codes of the attack messages
	Verdicts  map[string]string `json:"code_verdicts,omitempty"` // the verdicts each of those codes stands for
	Connected uint64            `json:"connected,omitempty"`     // revoked: handshakes that were accepted (should be 0)
	Note      string            `json:"note,omitempty"`
}

// Report is the final report of a run.
type Report struct {
	Config Config         `json:"config"`
	Start  time.Time      `json:"start"`
	End    time.Time      `json:"end"`
	Kinds  map[string]int `json:"kinds"` // devices per kind
	Stats  Stats          `json:"stats"`
	Attack *AttackReport  `json:"attack,omitempty"`
}

// codeName is the key of a reason code in the maps of [Stats].
func codeName(c byte) string { return fmt.Sprintf("0x%02x", c) }

// codeVerdicts lists the verdicts of docs/protocol.md#4-verdicts-and-reason-codes behind a code.
func codeVerdicts(c byte) string {
	var vs []string
	for _, v := range verdict.All() {
		if v.Code().Code == c {
			vs = append(vs, string(v))
		}
	}
	return strings.Join(vs, "|")
}

// snapshot reads the counters.
func (f *fleet) snapshot(rt *rateTracker) Stats {
	c := &f.ctr
	now := time.Now()
	s := Stats{
		Elapsed:       now.Sub(f.start),
		Devices:       f.cfg.Devices,
		Connected:     int(c.connected.Load()),
		Connects:      c.connects.Load(),
		ConnectErrors: c.connectErrors.Load(),
		TLSRefused:    c.tlsRefused.Load(),
		Generated:     c.generated.Load(),
		Sent:          c.sent.Load(),
		Resent:        c.resent.Load(),
		Acked:         c.acked.Load(),
		Duplicates:    c.duplicates.Load(),
		Dropped:       c.dropped.Load(),
		Buffered:      c.buffered.Load(),
		Errors:        c.errors.Load(),
		Enrolments:    c.enrolments.Load(),
		Renewals:      c.renewals.Load(),
		EnrolErrors:   c.enrolErrors.Load(),
		Statuses:      c.statuses[0].Load(),
		StatusRefused: c.statuses[1].Load(),
		Rejected:      map[string]uint64{},
		Codes:         map[string]uint64{},
	}
	if f.cfg.Attack == AttackRevoked {
		s.Devices += f.cfg.Attackers
	}
	s.ElapsedS = s.Elapsed.Seconds()
	for i := range c.codes {
		n := c.codes[i].Load()
		if n == 0 {
			continue
		}
		s.Codes[codeName(byte(i))] = n
		if i < 0x80 {
			continue
		}
		if f.hasExpect && byte(i) == f.expectCode {
			if m := c.attackMatched.Load(); m > 0 {
				s.Rejected[f.cfg.Attack] = m
				n -= min(n, m)
			}
		}
		if n > 0 {
			s.Rejected[codeName(byte(i))] = n
		}
	}
	for i := range c.connacks {
		if n := c.connacks[i].Load(); n > 0 {
			if s.Connacks == nil {
				s.Connacks = map[string]uint64{}
			}
			s.Connacks[codeName(byte(i))] = n
		}
	}
	q := c.latency.Quantiles(0.5, 0.99)
	s.P50, s.P99 = q[0], q[1]
	s.P50MS, s.P99MS = float64(s.P50)/1e6, float64(s.P99)/1e6
	s.MsgRate = rt.rate(now, c.answered.Load())
	return s
}

// rateTracker turns a growing count into a recent rate (over about the
// last two seconds).
type rateTracker struct {
	ts []time.Time
	ns []uint64
}

func (r *rateTracker) rate(now time.Time, n uint64) float64 {
	r.ts = append(r.ts, now)
	r.ns = append(r.ns, n)
	for len(r.ts) > 2 && now.Sub(r.ts[1]) >= 2*time.Second {
		r.ts, r.ns = r.ts[1:], r.ns[1:]
	}
	if len(r.ts) > 64 { // bounded whatever the interval
		r.ts, r.ns = slices.Clone(r.ts[len(r.ts)-64:]), slices.Clone(r.ns[len(r.ns)-64:])
	}
	dt := now.Sub(r.ts[0]).Seconds()
	if dt <= 0 {
		return 0
	}
	return float64(n-r.ns[0]) / dt
}

// attackReport summarises the attack messages.
func (f *fleet) attackReport() *AttackReport {
	mode := f.cfg.Attack
	if mode == "" {
		return nil
	}
	c := &f.ctr
	a := &AttackReport{Mode: mode, Attackers: f.cfg.Attackers, Codes: map[string]uint64{}, Verdicts: map[string]string{}}
	switch mode {
	case AttackRevoked:
		a.Expected = OutcomeTLSRefused
		a.Sent = c.attackSent.Load()
		a.Matched = c.tlsRefused.Load()
		a.Connected = c.revokedConnected.Load()
	case AttackBurst, AttackFlap:
		a.Expected = map[string]string{AttackBurst: "an anomaly event messages_per_minute at the gateway; every message accepted (0x00)",
			AttackFlap: "an anomaly event reconnects_per_hour at the gateway"}[mode]
		a.Sent = c.attackSent.Load()
		a.Note = fmt.Sprintf("after %v of normal behaviour; connects %d", f.cfg.AttackAfter, c.connects.Load())
	case AttackFlood:
		a.Expected = "gateway stays up; excess answered rate_limited (0x97) or refused at connect"
		a.Sent = c.attackSent.Load()
		a.Note = fmt.Sprintf("connects %d, connect errors %d", c.connects.Load(), c.connectErrors.Load())
	default:
		a.Expected = mode
		a.Code = codeName(f.expectCode)
		a.Sent = c.attackSent.Load()
		a.Matched = c.attackMatched.Load()
	}
	for i := range c.attackCodes {
		if n := c.attackCodes[i].Load(); n > 0 {
			a.Codes[codeName(byte(i))] = n
			if v := codeVerdicts(byte(i)); v != "" {
				a.Verdicts[codeName(byte(i))] = v
			}
		}
	}
	if f.cfg.MQTT != MQTT5 && mode != AttackRevoked {
		a.Note = strings.TrimSpace(a.Note + " MQTT 3.1.1 devices get a plain PUBACK for rejected messages: only MQTT 5 devices show verdicts")
	}
	if mode == AttackRateLimited {
		a.Note = strings.TrimSpace(a.Note + " bursts: messages within the device's budget are accepted (0x00)")
	}
	return a
}
