package fleet

import (
	"context"
	"crypto"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/update"
)

// FactoryFirmware is the firmware version every simulated device starts
// with (its fw_seq is 0).
const FactoryFirmware = "1.0.0"

// Bounds of an update command a device accepts.
const (
	maxCommand      = 64 << 10 // bytes of the command
	maxImage        = 64 << 20 // bytes of an image the device downloads
	downloadTries   = 5        // GETs of one image (the first and the Range resumes)
	downloadTimeout = 60 * time.Second
)

// ModelOf is the model of a simulated device of kind: "acme-oxi-1" for a
// pulse oximeter, "acme-bp-1" for a blood-pressure cuff, and so on.
func ModelOf(kind string) string {
	short := map[string]string{"spo2": "oxi", "bp": "bp", "glucose": "glu", "temp": "temp", "weight": "scale", "ecg": "ecg"}[kind]
	if short == "" {
		short = kind
	}
	return "acme-" + short + "-1"
}

// Command is an update command, as the gateway sends it on
// devices/{id}/cmd/update (docs/protocol.md#update-commands).
type Command struct {
	V        int    `cbor:"v"`
	Job      string `cbor:"job"`
	Manifest []byte `cbor:"manifest"`
	URL      string `cbor:"url"`
}

var (
	cmdDec = func() cbor.DecMode {
		m, err := cbor.DecOptions{DupMapKey: cbor.DupMapKeyEnforcedAPF, IndefLength: cbor.IndefLengthForbidden,
			TagsMd: cbor.TagsForbidden, ExtraReturnErrors: cbor.ExtraDecErrorUnknownField, MaxNestedLevels: 4,
			MaxMapPairs: 16, MaxArrayElements: 16, UTF8: cbor.UTF8RejectInvalid}.DecMode()
		if err != nil {
			panic(err)
		}
		return m
	}()
	firmwarePath = regexp.MustCompile(`^/firmware/[0-9a-f]{64}$`)
	jobID        = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
)

// EncodeCommand is the CBOR form of c (deterministic).
func EncodeCommand(c *Command) ([]byte, error) {
	em, err := cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		return nil, err
	}
	return em.Marshal(c)
}

// DecodeCommand parses an update command strictly: a map with exactly the
// keys v (1), job, manifest and url, a job ID of [A-Za-z0-9._-]{1,64}, and a
// URL /firmware/{64 lowercase hex}. Any error is the reason "malformed".
func DecodeCommand(b []byte) (*Command, error) {
	if len(b) > maxCommand {
		return nil, fmt.Errorf("command of %d bytes, limit %d", len(b), maxCommand)
	}
	var c Command
	if err := cmdDec.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("command: %v", err)
	}
	switch {
	case c.V != 1:
		return &c, fmt.Errorf("command version %d", c.V)
	case !jobID.MatchString(c.Job):
		return nil, fmt.Errorf("command job ID %.64q", c.Job)
	case len(c.Manifest) == 0:
		return &c, errors.New("command without a manifest")
	case !firmwarePath.MatchString(c.URL):
		return &c, fmt.Errorf("command URL %.80q is not /firmware/{sha256-hex}", c.URL)
	}
	return &c, nil
}

// installed is what a device keeps of its firmware across restarts (the
// file ID.fw in the state directory), with the last job it finished.
type installed struct {
	FW     string `json:"fw"`
	Seq    uint64 `json:"fw_seq"`
	Job    string `json:"job,omitempty"`
	State  string `json:"state,omitempty"` // final state of Job
	Reason string `json:"reason,omitempty"`
}

// report is a job state the device reports in a status record.
type report struct {
	job, state, reason string
	reconnect          bool // installed: reconnect and report with the new firmware
}

// updater is a device's update agent: it checks commands against the
// vendor key and its own state, downloads, checks and "installs" images,
// and tells the device's runner what to report. Its methods are safe for
// concurrent use: commands arrive on the MQTT library's goroutines.
type updater struct {
	id, model string
	pub       crypto.PublicKey // update-signing.pub; nil: every manifest is forged
	base      string           // https://host:port of the gateway's HTTPS listener
	tls       *tls.Config      // the device's own identity
	path      string           // where the installed firmware is kept; "" keeps nothing
	failAll   bool             // attack fail_install: every install fails
	battery   atomic.Int32     // last battery level, -1 unknown
	reports   chan report      // to the runner
	ctx       context.Context  // the device's: set by start

	mu   sync.Mutex
	fw   installed
	busy string // the job under way
}

func newUpdater(id, model, stateDir string, pub crypto.PublicKey, httpsAddr string, tc *tls.Config, failInstall bool) (*updater, error) {
	host, _, _ := net.SplitHostPort(httpsAddr)
	tc = tc.Clone()
	tc.ServerName = host
	u := &updater{id: id, model: model, pub: pub, base: "https://" + httpsAddr, tls: tc, failAll: failInstall, ctx: context.Background(),
		reports: make(chan report, 8), fw: installed{FW: FactoryFirmware}}
	u.battery.Store(-1)
	if stateDir == "" {
		return u, nil
	}
	u.path = filepath.Join(stateDir, id+".fw")
	b, err := os.ReadFile(u.path)
	if errors.Is(err, fs.ErrNotExist) {
		return u, nil
	}
	if err == nil {
		err = json.Unmarshal(b, &u.fw)
	}
	if err != nil || !telemetry.ValidSemver(u.fw.FW) {
		return nil, fmt.Errorf("firmware state %s: %v", u.path, err)
	}
	return u, nil
}

// status is the device's status record body: model, firmware, and the last
// finished job's state (or the report r, when not nil).
func (u *updater) status(r *report) telemetry.Status {
	u.mu.Lock()
	fw := u.fw
	u.mu.Unlock()
	st := telemetry.Status{V: telemetry.Version, Dev: u.id, Kind: telemetry.KindStatus, Model: u.model, FW: fw.FW, FWSeq: fw.Seq}
	job, state, reason := fw.Job, fw.State, fw.Reason
	if r != nil {
		job, state, reason = r.job, r.state, r.reason
	}
	if job != "" {
		st.Job, st.State = &job, &state
		if reason != "" {
			st.Reason = &reason
		}
	}
	if b := u.battery.Load(); b >= 0 {
		bat := uint8(b)
		st.Bat = &bat
	}
	return st
}

// command takes one update command: a repeat of the last finished job is
// answered with its final state; a new one is checked and run in the
// background, one at a time.
func (u *updater) command(payload []byte) {
	c, err := DecodeCommand(payload)
	if c == nil {
		return // no job to report on
	}
	u.mu.Lock()
	last, busy := u.fw, u.busy
	if err == nil && c.Job != last.Job && busy == "" {
		u.busy = c.Job
	}
	u.mu.Unlock()
	switch {
	case c.Job == last.Job && last.State != "":
		u.send(report{job: last.Job, state: last.State, reason: last.Reason})
	case busy != "":
		return // the gateway sends it again at the next connect
	case err != nil:
		u.finish(c.Job, telemetry.StateRejected, update.ReasonMalformed, nil)
	default:
		go u.run(u.ctx, c)
	}
}

// run is one job: check, download, check, install.
func (u *updater) run(ctx context.Context, c *Command) {
	u.mu.Lock()
	seq := u.fw.Seq
	u.mu.Unlock()
	m, err := update.Parse(c.Manifest, u.pub)
	if err == nil {
		err = m.Check(update.DeviceState{Model: u.model, InstalledSeq: seq, Battery: int(u.battery.Load()), ID: u.id, Now: time.Now()})
	}
	if err != nil || u.pub == nil {
		u.finish(c.Job, telemetry.StateRejected, reasonOf(err, update.ReasonForged), nil)
		return
	}
	u.send(report{job: c.Job, state: telemetry.StateDownloading})
	img, err := u.download(ctx, c.URL, m.Size)
	if err == nil {
		err = update.CheckImage(m, img)
	}
	if err != nil {
		u.finish(c.Job, telemetry.StateFailed, reasonOf(err, "download"), nil)
		return
	}
	u.send(report{job: c.Job, state: telemetry.StateInstalling})
	if u.failAll {
		u.finish(c.Job, telemetry.StateFailed, "install", nil)
		return
	}
	u.finish(c.Job, telemetry.StateSucceeded, "", m)
}

func reasonOf(err error, otherwise string) string {
	if r := update.ReasonOf(err); r != "" {
		return r
	}
	return otherwise
}

// finish records a job's final state (and, with m, the installed
// firmware) durably, then reports it: after an install, at the
// reconnection.
func (u *updater) finish(job, state, reason string, m *update.Manifest) {
	u.mu.Lock()
	fw := u.fw
	fw.Job, fw.State, fw.Reason = job, state, reason
	if m != nil {
		fw.FW, fw.Seq = m.Version, m.Seq
	}
	err := u.save(fw)
	if err == nil {
		u.fw = fw
	}
	u.busy = ""
	u.mu.Unlock()
	if err != nil {
		u.send(report{job: job, state: telemetry.StateFailed, reason: "install"})
		return
	}
	u.send(report{job: job, state: state, reason: reason, reconnect: m != nil})
}

// save writes fw to the state file (temporary file, then rename).
func (u *updater) save(fw installed) error {
	if u.path == "" {
		return nil
	}
	b, err := json.Marshal(fw)
	if err != nil {
		return err
	}
	tmp := u.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, u.path)
}

func (u *updater) send(r report) {
	select {
	case u.reports <- r:
	default: // the runner is gone or far behind: the final state is in the state file
	}
}

// download GETs the image at path from the gateway with the device's
// certificate, resuming a cut transfer with a Range request, and never
// reads more than size bytes.
func (u *updater) download(ctx context.Context, path string, size uint64) ([]byte, error) {
	if size > maxImage {
		return nil, &update.Refusal{Reason: update.ReasonSize, Detail: fmt.Sprintf("image of %d bytes, limit %d", size, maxImage)}
	}
	ctx, cancel := context.WithTimeout(ctx, downloadTimeout)
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: u.tls, DisableCompression: true}}
	defer hc.CloseIdleConnections()
	img := make([]byte, 0, size)
	var last error
	for try := 0; try < downloadTries && uint64(len(img)) < size; try++ {
		if try > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(try) * 100 * time.Millisecond):
			}
		}
		img, last = u.get(ctx, hc, path, img, size)
		if last != nil && errors.As(last, new(*update.Refusal)) {
			return nil, last
		}
	}
	if uint64(len(img)) < size {
		return nil, fmt.Errorf("download %s: %d of %d bytes: %v", path, len(img), size, last)
	}
	return img, nil
}

// get is one GET of the image from offset len(have): it returns what the
// device has afterwards, and why the transfer ended early.
func (u *updater) get(ctx context.Context, hc *http.Client, path string, have []byte, size uint64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.base+path, nil)
	if err != nil {
		return have, err
	}
	if len(have) > 0 {
		req.Header.Set("Range", "bytes="+strconv.Itoa(len(have))+"-")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return have, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusOK:
		have = have[:0] // the whole image again
	case resp.StatusCode == http.StatusPartialContent && len(have) > 0:
		var start int
		if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-", &start); err != nil || start != len(have) {
			return have[:0], fmt.Errorf("Content-Range %q for a resume at %d", resp.Header.Get("Content-Range"), len(have))
		}
	default:
		return have, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	// One byte more than the rest: an image over its size is refused, not truncated.
	n, err := io.ReadFull(io.LimitReader(resp.Body, int64(size)-int64(len(have))+1), have[len(have):cap(have)])
	have = have[:len(have)+n]
	if err == nil {
		var one [1]byte
		if m, _ := resp.Body.Read(one[:]); m > 0 {
			return nil, &update.Refusal{Reason: update.ReasonSize, Detail: fmt.Sprintf("image over its %d bytes", size)}
		}
		return have, nil
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		if uint64(len(have)) == size {
			return have, nil
		}
		return have, fmt.Errorf("transfer cut at %d of %d bytes", len(have), size)
	}
	return have, err
}

// start gives the updater the device's context: downloads end with it.
func (u *updater) start(ctx context.Context) {
	if u != nil {
		u.ctx = ctx
	}
}

// reported is the channel of the job states to report; nil (never ready)
// for a device without updates.
func (u *updater) reported() <-chan report {
	if u == nil {
		return nil
	}
	return u.reports
}
