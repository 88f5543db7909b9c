package cloud

import (
	"bytes"
	"cmp"
	"container/list"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// Watcher is the reference consumer's logic (`broker watch`): it decodes
// each cloud message, drops duplicates by ID, checks the device signature
// end to end, refuses a record signed with a revoked device certificate
// and renders a readable line. It is safe for concurrent use.
//
// It checks signatures with the certificates the gateways publish on
// certs/{site}/{device} ([Watcher.HandleChain]), verified to ca.crt; a
// watcher made with [NewWatcher] falls back on devices/{id}.crt of the PKI
// directory for a device with no published chain.
type Watcher struct {
	dir      string         // the PKI directory; "" for a watcher of published chains only
	deviceCA *x509.CertPool // with dir
	issuing  *x509.CertPool // with dir: issuing-ca.crt, the intermediate of enrolled devices (nil: none)
	lists    []*revList     // with dir: crl.pem, and issuing-crl.pem when there is an issuing CA
	roots    *x509.CertPool // ca.crt

	mu     sync.Mutex
	seen   *lru                 // message IDs
	certs  map[string]*devKey   // device ID -> key of devices/{id}.crt
	chains map[string][]*devKey // device ID -> keys of its published chains, newest first
}

// devKey is a device certificate and the verifier of its key.
type devKey struct {
	v    *envelope.Verifier
	cert *x509.Certificate
}

// NewWatcher reads ca.crt, device-ca.crt and crl.pem from the PKI directory
// dir (and issuing-ca.crt with issuing-crl.pem, when there) and remembers up
// to dedup message IDs (default 100000 when <= 0).
func NewWatcher(dir string, dedup int) (*Watcher, error) {
	pool, err := pki.LoadPool(filepath.Join(dir, pki.FileDeviceCA))
	if err != nil {
		return nil, fmt.Errorf("load device CA: %w", err)
	}
	w, err := NewChainWatcher(filepath.Join(dir, pki.FileCA), dedup)
	if err != nil {
		return nil, err
	}
	w.dir, w.deviceCA = dir, pool
	if err := w.loadRevocations(dir); err != nil {
		return nil, err
	}
	return w, nil
}

// NewChainWatcher trusts caFile (the deployment's ca.crt) alone: it checks
// records with the devices' published chains only, and a record of a device
// with no chain yet is [SigUnverified].
func NewChainWatcher(caFile string, dedup int) (*Watcher, error) {
	roots, err := pki.LoadPool(caFile)
	if err != nil {
		return nil, fmt.Errorf("load trust anchor: %w", err)
	}
	if dedup <= 0 {
		dedup = 100000
	}
	return &Watcher{roots: roots, seen: newLRU(dedup), certs: map[string]*devKey{},
		chains: map[string][]*devKey{}}, nil
}

// maxCachedVerifiers bounds the verifier cache.
const maxCachedVerifiers = 100000

// Status of a message's end-to-end signature check.
const (
	SigOK       = "sig ok"
	SigNoCert   = "sig unchecked: no device certificate"
	SigBad      = "SIG BAD"
	SigMismatch = "SIG OK BUT REC DIFFERS"
	SigRevoked  = "REJECTED: device certificate revoked"
)

// Seen is one decoded message and the outcome of its checks.
type Seen struct {
	Msg    *wire.Message
	Dup    bool
	Status string // one of SigOK, SigNoCert, SigUnverified, SigBad, SigMismatch, SigRevoked
	Detail string
}

// Handle processes one message received on topic.
func (w *Watcher) Handle(topic string, payload []byte) (*Seen, error) {
	m, err := wire.Decode(payload)
	if err != nil {
		return nil, err
	}
	s := &Seen{Msg: m}
	w.mu.Lock()
	s.Dup = !w.seen.add(m.ID)
	w.mu.Unlock()
	if s.Dup {
		return s, nil
	}
	return w.Check(topic, m), nil
}

// Check judges a decoded message received on topic, as [Watcher.Handle]
// does but without dropping duplicates (Dup is false): a consumer that
// must see a redelivery again, such as the FHIR exporter, calls it.
func (w *Watcher) Check(topic string, m *wire.Message) *Seen {
	s := &Seen{Msg: m}
	s.Status, s.Detail = w.check(topic, m)
	return s
}

// check returns the status of m and its detail.
func (w *Watcher) check(topic string, m *wire.Message) (status, detail string) {
	if lv := strings.Split(topic, "/"); len(lv) == 4 && (lv[1] != m.Site || lv[2] != m.Rec.Dev || lv[3] != m.Rec.Kind) {
		return SigMismatch, "topic does not match the message"
	}
	if m.ID != m.Rec.Dev+":"+strconv.FormatUint(m.Rec.Seq, 10) {
		return SigMismatch, "id is not dev:seq"
	}
	signed, err := w.verify(m.Rec.Dev, m.Sig)
	switch {
	case errors.Is(err, errNoChain):
		return SigUnverified, ""
	case errors.Is(err, os.ErrNotExist):
		return SigNoCert, ""
	case errors.As(err, new(*revokedError)):
		return SigRevoked, err.Error()
	case err != nil:
		return SigBad, err.Error()
	}
	rec, err := telemetry.Decode(signed)
	if err != nil {
		return SigMismatch, "signed payload: " + err.Error()
	}
	a, err1 := telemetry.Encode(rec)
	b, err2 := telemetry.Encode(&m.Rec)
	if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
		return SigMismatch, "rec is not the signed record"
	}
	return SigOK, ""
}

// errNoChain: a watcher without a PKI directory has no published chain of the device.
var errNoChain = errors.New("no published certificate")

// verify checks sig with dev's published certificates, newest first, or,
// with none and a PKI directory, with devices/{dev}.crt. It returns the
// signed payload.
func (w *Watcher) verify(dev string, sig []byte) ([]byte, error) {
	vs := w.published(dev)
	if len(vs) == 0 {
		if w.dir == "" {
			return nil, errNoChain
		}
		k, err := w.verifier(dev)
		if err != nil {
			return nil, err
		}
		vs = []*devKey{k}
	}
	var first error
	for _, k := range vs {
		if err := w.revoked(k.cert); err != nil {
			first = cmp.Or(first, err)
			continue
		}
		signed, err := k.v.Verify(sig)
		if err == nil {
			return signed, nil
		}
		if first == nil {
			first = err
		}
	}
	return nil, first
}

// verifier returns the key of device id from devices/{id}.crt, after
// checking that the certificate chains to device-ca.crt (directly or
// through issuing-ca.crt).
func (w *Watcher) verifier(id string) (*devKey, error) {
	if !pki.ValidDeviceID(id) {
		return nil, fmt.Errorf("invalid device id %q", id)
	}
	w.mu.Lock()
	v, ok := w.certs[id]
	w.mu.Unlock()
	if ok {
		return v, nil
	}
	crt, _ := pki.DevicePaths(w.dir, id)
	cert, err := pki.LoadCert(crt)
	if err != nil {
		return nil, err
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: w.deviceCA, Intermediates: w.issuing,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("device certificate of %s does not chain to the device CA", id)
	}
	if cert.Subject.CommonName != id {
		return nil, fmt.Errorf("device certificate CN %q is not %s", cert.Subject.CommonName, id)
	}
	ev, err := envelope.NewVerifier(cert.PublicKey, id)
	if err != nil {
		return nil, err
	}
	v = &devKey{v: ev, cert: cert}
	w.mu.Lock()
	if len(w.certs) >= maxCachedVerifiers {
		clear(w.certs)
	}
	w.certs[id] = v
	w.mu.Unlock()
	return v, nil
}

// shortNames are the display names of the codes of docs/protocol.md#the-record.
var shortNames = map[string]string{
	"MDC_PULS_OXIM_SAT_O2":              "SpO2",
	"MDC_PULS_OXIM_PULS_RATE":           "pulse",
	"MDC_PRESS_BLD_NONINV_SYS":          "sys",
	"MDC_PRESS_BLD_NONINV_DIA":          "dia",
	"MDC_PRESS_BLD_NONINV_MEAN":         "mean",
	"MDC_PULS_RATE_NON_INV":             "pulse",
	"MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD": "glucose",
	"MDC_TEMP_BODY":                     "temp",
	"MDC_MASS_BODY_ACTUAL":              "weight",
	"MDC_ECG_ELEC_POTL_II":              "ECG-II",
}

// Line renders s as one readable line, e.g.
// `12:00:01 site1 dev-00001 spo2 SpO2 97 % pulse 72 /min  [sig ok]`.
// Times are shown in loc (time.Local when nil).
func (s *Seen) Line(loc *time.Location) string {
	if loc == nil {
		loc = time.Local
	}
	m := s.Msg
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s %s", time.UnixMilli(m.Rec.TS).In(loc).Format("15:04:05"), m.Site, m.Rec.Dev, m.Rec.Kind)
	for _, o := range m.Rec.Obs {
		name := shortNames[o.Code]
		if name == "" {
			name = o.Code
		}
		if o.Val.IsWaveform() {
			fmt.Fprintf(&b, " %s %d samples", name, len(o.Val.Samples))
			if o.PeriodMS != nil {
				fmt.Fprintf(&b, " @%dms", *o.PeriodMS)
			}
			fmt.Fprintf(&b, " %s", o.Unit)
			continue
		}
		fmt.Fprintf(&b, " %s %s %s", name, strconv.FormatFloat(o.Val.Num, 'f', -1, 64), o.Unit)
	}
	if m.Rec.Bat != nil {
		fmt.Fprintf(&b, " bat %d%%", *m.Rec.Bat)
	}
	fmt.Fprintf(&b, "  [%s", s.Status)
	if s.Detail != "" {
		fmt.Fprintf(&b, ": %s", s.Detail)
	}
	b.WriteString("]")
	return b.String()
}

// lru is a bounded set of strings that forgets the least recently added.
type lru struct {
	max   int
	order *list.List
	idx   map[string]*list.Element
}

func newLRU(max int) *lru { return &lru{max: max, order: list.New(), idx: map[string]*list.Element{}} }

// add reports whether k was new.
func (l *lru) add(k string) bool {
	if e, ok := l.idx[k]; ok {
		l.order.MoveToFront(e)
		return false
	}
	l.idx[k] = l.order.PushFront(k)
	if l.order.Len() > l.max {
		old := l.order.Back()
		l.order.Remove(old)
		delete(l.idx, old.Value.(string))
	}
	return true
}
