package view

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/vitalgate/vitalgate/internal/cloud"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// maxECG bounds the waveform kept per device for the heart rate: 10 s at
// 250 Hz.
const maxECG = 2500

// maxRows bounds the devices the view remembers (it shows them all).
const maxRows = 1000

// maxRecent is how many security events the view keeps for display.
const maxRecent = 4

// Row is the latest state of one device.
type Row struct {
	Dev     string
	Kind    string
	Seq     uint64
	TS      time.Time // measurement time (the record's ts)
	RX      time.Time // when the view received it
	Fields  []Field
	Sig     string // cloud.SigOK, ... of the last message
	Records int    // unique messages received
	Bat     *uint8

	ecg      []float64
	ecgSeq   uint64
	ecgValid bool
}

// Event is a security event as the gateway publishes it at
// security/{site}/{gateway} (docs/apps.md#security-events).
type Event = wire.Event

// View is the clinician view's state. It is safe for concurrent use: the
// MQTT callbacks feed it, the render loop reads [View.Snapshot].
type View struct {
	mu         sync.Mutex
	rows       map[string]*Row
	rejections map[string]uint64
	recent     []Event
	received   uint64 // telemetry messages, duplicates included
	dups       uint64
	sigBad     uint64
	undecoded  uint64
	chainsOK   uint64              // published certificate chains that verified
	chainsBad  uint64              // and those rejected
	chainErr   string              // the last rejection
	jobs       map[string]*Rollout // rollouts, by job ID
	now        func() time.Time
}

// New returns an empty view.
func New() *View {
	return &View{rows: map[string]*Row{}, rejections: map[string]uint64{}, jobs: map[string]*Rollout{}, now: time.Now}
}

// Telemetry records one message as checked by a [cloud.Watcher] (s), or a
// message that did not decode (s == nil).
func (v *View) Telemetry(s *cloud.Seen) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.received++
	if s == nil || s.Msg == nil {
		v.undecoded++
		return
	}
	if s.Dup {
		v.dups++
		return
	}
	if s.Status != cloud.SigOK {
		v.sigBad++
	}
	rec := &s.Msg.Rec
	r, ok := v.rows[rec.Dev]
	if !ok {
		if len(v.rows) >= maxRows {
			return
		}
		r = &Row{Dev: rec.Dev}
		v.rows[rec.Dev] = r
	}
	r.Records++
	if rec.Seq < r.Seq && r.Sig == cloud.SigOK {
		return // an older record (a backlog arriving late): keep the latest
	}
	hr := 0.0
	if rec.Kind == "ecg" && s.Status == cloud.SigOK {
		hr = r.addECG(rec.Seq, rec.Obs)
	}
	r.Kind, r.Seq, r.TS, r.RX = rec.Kind, rec.Seq, time.UnixMilli(rec.TS), v.now()
	r.Fields, r.Sig, r.Bat = Vitals(rec, hr), s.Status, rec.Bat
}

// addECG appends the waveform of a record to the device's buffer (restarting
// it after a gap in seq) and returns the heart rate it shows.
func (r *Row) addECG(seq uint64, obs []telemetry.Observation) float64 {
	for _, o := range obs {
		if o.Code != telemetry.CodeECG || !o.Val.IsWaveform() || o.PeriodMS == nil {
			continue
		}
		if !r.ecgValid || seq != r.ecgSeq+1 {
			r.ecg = r.ecg[:0]
		}
		r.ecgSeq, r.ecgValid = seq, true
		r.ecg = append(r.ecg, o.Val.Samples...)
		if over := len(r.ecg) - maxECG; over > 0 {
			r.ecg = slices.Delete(r.ecg, 0, over)
		}
		return HeartRate(r.ecg, *o.PeriodMS)
	}
	return 0
}

// Chain counts one published certificate chain as the watcher judged it.
func (v *View) Chain(c *cloud.Chain) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if c.Err == nil {
		v.chainsOK++
		return
	}
	v.chainsBad++
	v.chainErr = c.Line()
}

// SecurityEvent counts one security event payload (JSON) by its verdict.
func (v *View) SecurityEvent(payload []byte) error {
	var e Event
	if err := json.Unmarshal(payload, &e); err != nil {
		return fmt.Errorf("security event: %w", err)
	}
	if e.Verdict == "" {
		return fmt.Errorf("security event without a verdict")
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.rejections) < 64 || v.rejections[e.Verdict] > 0 { // bounded: verdicts are a short list
		v.rejections[e.Verdict]++
	}
	v.recent = append(v.recent, e)
	if len(v.recent) > maxRecent {
		v.recent = slices.Delete(v.recent, 0, len(v.recent)-maxRecent)
	}
	return nil
}

// Snapshot is a consistent copy of the view for rendering.
type Snapshot struct {
	Rows       []Row             // sorted by device ID
	Rejections map[string]uint64 // security events by verdict
	Recent     []Event           // the last few events, oldest first
	Received   uint64            // telemetry messages received, duplicates included
	Duplicates uint64            // dropped by message ID
	SigProblem uint64            // messages whose end-to-end signature check failed
	Undecoded  uint64
	ChainsOK   uint64    // published certificate chains verified to ca.crt
	ChainsBad  uint64    // published certificate chains rejected
	ChainErr   string    // the last rejection, as a line
	Rollouts   []Rollout // firmware rollouts, by job ID
}

// Snapshot copies the current state.
func (v *View) Snapshot() Snapshot {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := Snapshot{Rejections: make(map[string]uint64, len(v.rejections)), Recent: slices.Clone(v.recent),
		Received: v.received, Duplicates: v.dups, SigProblem: v.sigBad, Undecoded: v.undecoded,
		ChainsOK: v.chainsOK, ChainsBad: v.chainsBad, ChainErr: v.chainErr, Rollouts: v.rollouts()}
	for k, n := range v.rejections {
		s.Rejections[k] = n
	}
	for _, r := range v.rows {
		c := *r
		c.Fields = slices.Clone(r.Fields)
		c.ecg = nil
		s.Rows = append(s.Rows, c)
	}
	sort.Slice(s.Rows, func(i, j int) bool { return s.Rows[i].Dev < s.Rows[j].Dev })
	return s
}

// Rejected is the total of the rejection counts.
func (s Snapshot) Rejected() uint64 {
	var n uint64
	for _, c := range s.Rejections {
		n += c
	}
	return n
}

// Options control [Render].
type Options struct {
	// Color highlights abnormal values in bold red (ANSI). Without it they
	// are marked with a leading "!".
	Color bool
	// Header lines printed above the table (addresses, fleet progress).
	Header []string
	// Now is the time ages are computed from (default time.Now()).
	Now time.Time
}

const (
	bold    = "\x1b[1m"
	boldRed = "\x1b[1;31m"
	reset   = "\x1b[0m"
)

// Render writes the snapshot as a table: one row per device with its latest
// vitals, then the rejections by verdict and the last security events.
func Render(w io.Writer, s Snapshot, o Options) error {
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	var b strings.Builder
	for _, h := range o.Header {
		b.WriteString(h)
		b.WriteByte('\n')
	}
	title := "Clinician view (cloud app, JWT): latest vitals per device, signatures checked end to end"
	if o.Color {
		title = bold + title + reset
	}
	b.WriteString(title + "\n")

	writeTable(&b, s.Rows, o)
	if len(s.Rows) == 0 {
		b.WriteString("(no telemetry yet)\n")
	}
	fmt.Fprintf(&b, "received %d  duplicates dropped %d  signature problems %d", s.Received, s.Duplicates, s.SigProblem)
	if s.Undecoded > 0 {
		fmt.Fprintf(&b, "  undecodable %d", s.Undecoded)
	}
	fmt.Fprintf(&b, "\ndevice certificates (published, checked against ca.crt): %d verified, %d rejected\n", s.ChainsOK, s.ChainsBad)
	if s.ChainErr != "" {
		b.WriteString("last rejected: " + s.ChainErr + "\n")
	}

	writeRollouts(&b, s.Rollouts)
	writeSecurity(&b, s)
	if o.Color {
		b.WriteString("abnormal values in " + boldRed + "bold red" + reset + "\n")
	} else {
		b.WriteString("! marks an abnormal value\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeTable writes the column titles and one line per device, each column
// as wide as its widest plain text.
func writeTable(b *strings.Builder, rows []Row, o Options) {
	cols := []string{"DEVICE", "KIND", "VITALS", "SEQ", "AGE", "SIG", "BAT"}
	cells := make([][]string, len(rows))
	plain := make([][]string, len(rows))
	for i, r := range rows {
		vit, vitPlain := renderFields(r.Fields, o.Color)
		age := o.Now.Sub(r.TS).Round(100 * time.Millisecond)
		if age < 0 {
			age = 0
		}
		sig := "ok"
		if r.Sig != cloud.SigOK {
			sig = r.Sig
		}
		bat := "-"
		if r.Bat != nil {
			bat = fmt.Sprintf("%d%%", *r.Bat)
		}
		plain[i] = []string{r.Dev, r.Kind, vitPlain, fmt.Sprint(r.Seq), shortDur(age), sig, bat}
		cells[i] = slices.Clone(plain[i])
		cells[i][2] = vit
	}
	width := make([]int, len(cols))
	for j, c := range cols {
		width[j] = utf8.RuneCountInString(c)
		for i := range plain {
			width[j] = max(width[j], utf8.RuneCountInString(plain[i][j]))
		}
	}
	writeRow := func(shown, text []string) {
		for j := range shown {
			if j > 0 {
				b.WriteString("  ")
			}
			b.WriteString(shown[j])
			if j < len(shown)-1 {
				b.WriteString(strings.Repeat(" ", width[j]-utf8.RuneCountInString(text[j])))
			}
		}
		b.WriteByte('\n')
	}
	writeRow(cols, cols)
	for i := range cells {
		writeRow(cells[i], plain[i])
	}
}

// writeSecurity writes the rejection counts by verdict on one line, then
// the last security events, one a line, each cut to 140 characters.
func writeSecurity(b *strings.Builder, s Snapshot) {
	b.WriteString("rejected by the gateway (security events):")
	if len(s.Rejections) == 0 {
		b.WriteString(" none yet")
	}
	keys := make([]string, 0, len(s.Rejections))
	for k := range s.Rejections {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(b, " %s %d", k, s.Rejections[k])
	}
	b.WriteByte('\n')
	for _, e := range s.Recent {
		line := fmt.Sprintf("  %s %s %s: %s", time.UnixMilli(e.TS).Format("15:04:05"), e.Verdict, orDash(e.Dev), e.Detail)
		if n := 140; utf8.RuneCountInString(line) > n {
			line = string([]rune(line)[:n-1]) + "…"
		}
		b.WriteString(line + "\n")
	}
}

// renderFields joins the fields with " / ", highlighting abnormal ones; it
// returns the shown text and its plain form (for column widths).
func renderFields(fs []Field, color bool) (shown, plain string) {
	var sb, pb strings.Builder
	for i, f := range fs {
		if i > 0 {
			sb.WriteString(" / ")
			pb.WriteString(" / ")
		}
		t := f.Text
		if f.Abnormal && !color {
			t = "!" + t
		}
		pb.WriteString(t)
		if f.Abnormal && color {
			t = boldRed + t + reset
		}
		sb.WriteString(t)
	}
	return sb.String(), pb.String()
}

func shortDur(d time.Duration) string {
	if d < time.Minute {
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	return d.Truncate(time.Second).String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
