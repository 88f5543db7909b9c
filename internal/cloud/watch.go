package cloud

import (
	"bytes"
	"container/list"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
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
type Watcher struct {
	dir      string
	deviceCA *x509.CertPool
	issuing  *x509.CertPool // issuing-ca.crt, the intermediate of enrolled devices (nil: none)
	lists    []*revList     // crl.pem, and issuing-crl.pem when there is an issuing CA

	mu    sync.Mutex
	seen  *lru                    // message IDs
	certs map[string]*devVerifier // device ID -> verifier of a chained certificate
}

// revList is a CA's revocation list, reloaded on change.
type revList struct {
	ca  *x509.Certificate
	rev *pki.Revocations
}

// devVerifier checks a device's signatures; list revokes its certificate.
type devVerifier struct {
	v      *envelope.Verifier
	serial *big.Int
	list   *revList // the list of the certificate's issuer (nil: none)
}

// NewWatcher reads device-ca.crt and its crl.pem from the PKI directory dir
// (and issuing-ca.crt with issuing-crl.pem, when there), and remembers up to
// dedup message IDs (default 100000 when <= 0).
func NewWatcher(dir string, dedup int) (*Watcher, error) {
	caFile := filepath.Join(dir, pki.FileDeviceCA)
	pool, err := pki.LoadPool(caFile)
	if err != nil {
		return nil, fmt.Errorf("load device CA: %w", err)
	}
	if dedup <= 0 {
		dedup = 100000
	}
	w := &Watcher{dir: dir, deviceCA: pool, seen: newLRU(dedup), certs: map[string]*devVerifier{}}
	if err := w.addList(caFile, filepath.Join(dir, pki.FileCRL)); err != nil {
		return nil, err
	}
	issFile := filepath.Join(dir, pki.FileIssuingCA)
	if _, err := os.Stat(issFile); err == nil {
		if w.issuing, err = pki.LoadPool(issFile); err != nil {
			return nil, fmt.Errorf("load issuing CA: %w", err)
		}
		if err := w.addList(issFile, filepath.Join(dir, pki.FileIssuingCRL)); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// addList loads the revocation list crlFile of the CA in caFile.
func (w *Watcher) addList(caFile, crlFile string) error {
	ca, err := pki.LoadCert(caFile)
	if err != nil {
		return err
	}
	rev, err := pki.NewRevocations(crlFile, ca)
	if err != nil {
		return fmt.Errorf("device revocation list: %w", err)
	}
	w.lists = append(w.lists, &revList{ca: ca, rev: rev})
	return nil
}

// WatchRevocations reloads the revocation lists when their files change
// (polled every second) until ctx is done; a list that fails to load keeps
// the previous one.
func (w *Watcher) WatchRevocations(ctx context.Context) {
	for _, l := range w.lists {
		go l.rev.Watch(ctx, time.Second)
	}
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
	Status string // one of SigOK, SigNoCert, SigBad, SigMismatch, SigRevoked
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
	if lv := strings.Split(topic, "/"); len(lv) == 4 && (lv[1] != m.Site || lv[2] != m.Rec.Dev || lv[3] != m.Rec.Kind) {
		s.Status, s.Detail = SigMismatch, "topic does not match the message"
		return s, nil
	}
	if m.ID != m.Rec.Dev+":"+strconv.FormatUint(m.Rec.Seq, 10) {
		s.Status, s.Detail = SigMismatch, "id is not dev:seq"
		return s, nil
	}
	v, err := w.verifier(m.Rec.Dev)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			s.Status = SigNoCert
			return s, nil
		}
		s.Status, s.Detail = SigBad, err.Error()
		return s, nil
	}
	if v.list != nil && v.list.rev.IsRevoked(v.serial) {
		s.Status, s.Detail = SigRevoked, fmt.Sprintf("serial %x is on the revocation list of %s", v.serial, v.list.ca.Subject.CommonName)
		return s, nil
	}
	signed, err := v.v.Verify(m.Sig)
	if err != nil {
		s.Status, s.Detail = SigBad, err.Error()
		return s, nil
	}
	rec, err := telemetry.Decode(signed)
	if err != nil {
		s.Status, s.Detail = SigMismatch, "signed payload: "+err.Error()
		return s, nil
	}
	a, err1 := telemetry.Encode(rec)
	b, err2 := telemetry.Encode(&m.Rec)
	if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
		s.Status, s.Detail = SigMismatch, "rec is not the signed record"
		return s, nil
	}
	s.Status = SigOK
	return s, nil
}

// verifier returns the verifier of device id from devices/{id}.crt, after
// checking that the certificate chains to device-ca.crt (directly or
// through issuing-ca.crt).
func (w *Watcher) verifier(id string) (*devVerifier, error) {
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
	v = &devVerifier{v: ev, serial: cert.SerialNumber}
	for _, l := range w.lists {
		if cert.CheckSignatureFrom(l.ca) == nil {
			v.list = l
		}
	}
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
