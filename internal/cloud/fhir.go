package cloud

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/vitalgate/vitalgate/internal/fhirexport"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// The broker's own FHIR exporter (Config.FHIR): an [fhirexport.Exporter]
// connected to the broker in process, through a listener that no socket
// reaches, with an identity of its own: it reads telemetry/ and certs/ of
// the configured sites and publishes fhir/{site}/{device} there, and its
// security events on security/{site}/vitalgate-fhir-exporter, nothing
// else.

const (
	// listenerExporter is the in-process listener of the FHIR exporter.
	listenerExporter = "fhir-exporter"
	// kindExporter is the FHIR exporter's kind of client.
	kindExporter = "exporter"
	// exporterClientID is the exporter's client ID: its persistent session
	// is the position of the export, kept in the store across restarts.
	exporterClientID = "vitalgate-fhir-exporter"
)

// FHIRChecker adapts a [Watcher] to the exporter's [fhirexport.Checker]:
// a record whose signature verified is Verified, one of a device without a
// certificate yet Unverified, any other (bad signature, altered rec,
// revoked certificate) Rejected.
func FHIRChecker(w *Watcher) fhirexport.Checker { return fhirChecker{w} }

type fhirChecker struct{ w *Watcher }

func (c fhirChecker) Check(topic string, m *wire.Message) (fhirexport.Verdict, string) {
	s := c.w.Check(topic, m)
	switch s.Status {
	case SigOK:
		return fhirexport.Verified, ""
	case SigNoCert, SigUnverified:
		return fhirexport.Unverified, s.Status
	}
	return fhirexport.Rejected, strings.TrimSuffix(s.Status+": "+s.Detail, ": ")
}

func (c fhirChecker) Chain(topic string, payload []byte) error {
	return c.w.HandleChain(topic, payload).Err
}

// NewFHIRWatcher is the watcher an exporter checks signatures with: with
// device-ca.crt in the PKI directory, the published chains and
// devices/{id}.crt (and the revocation lists); with ca.crt alone, the
// published chains only.
func NewFHIRWatcher(dir string) (*Watcher, error) {
	if _, err := os.Stat(filepath.Join(dir, pki.FileDeviceCA)); err == nil {
		return NewWatcher(dir, 1)
	}
	return NewChainWatcher(filepath.Join(dir, pki.FileCA), 1)
}

// newExporter makes the broker's FHIR exporter when Config.FHIR is
// enabled (reading the FHIR server's CA and token files), and its
// in-process listener.
func (b *Broker) newExporter() error {
	if !b.cfg.FHIR.Enabled {
		return nil
	}
	w, err := NewFHIRWatcher(b.cfg.PKI)
	if err != nil {
		return fmt.Errorf("fhir exporter: %w", err)
	}
	b.pipe = newPipeListener(listenerExporter)
	cfg := b.cfg.FHIR
	cfg.Group = "" // one exporter per broker: nothing to share
	b.exporter, err = fhirexport.New(cfg, fhirexport.Options{
		Conn:       fhirexport.Conn{URL: "in-process://" + listenerExporter, ClientID: exporterClientID, Dial: b.pipe.dial},
		Checker:    FHIRChecker(w),
		Log:        b.log,
		Registerer: b.m.reg,
		MaxPublish: b.cfg.MaxPacket - fhirexport.PublishOverhead,
	})
	b.exporterWatcher = w
	return err
}

// startExporter runs the exporter made by newExporter, if any, until
// closeExporter.
func (b *Broker) startExporter() {
	if b.exporter == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.stopExporter = cancel
	b.exporterWatcher.WatchRevocations(ctx)
	b.exporterWG.Add(1)
	go func() {
		defer b.exporterWG.Done()
		if err := b.exporter.Run(ctx); err != nil {
			b.log.Error("fhir exporter stopped", "error", err)
		}
	}()
}

// closeExporter stops the exporter and waits for it (bounded: its
// unfinished records are redelivered at the next start anyway).
func (b *Broker) closeExporter() {
	if b.stopExporter == nil {
		return
	}
	b.stopExporter()
	done := make(chan struct{})
	go func() { b.exporterWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		b.log.Warn("fhir exporter did not stop within 5s")
	}
}

// exporterIdentity is the in-process exporter's identity: the sites of
// its configuration.
func (b *Broker) exporterIdentity() *identity {
	sites := map[string]bool{}
	for _, s := range b.cfg.FHIR.Sites {
		sites[s] = true
	}
	return &identity{kind: kindExporter, name: "fhir", sites: sites}
}

// exporterMayRead: telemetry/{site}/... and certs/{site}/... of its sites,
// both first levels literal, within the bounds of topicBounded.
func exporterMayRead(id *identity, filter string) bool {
	if !topicBounded(filter) {
		return false
	}
	lv := strings.SplitN(filter, "/", 3)
	return len(lv) == 3 && (lv[0] == "telemetry" || lv[0] == "certs") && id.sites[lv[1]]
}

// exporterMayPublish: fhir/{site}/{device} of its sites, and its security
// events on security/{site}/{its client ID}.
func exporterMayPublish(id *identity, topic string) bool {
	if !topicBounded(topic) {
		return false
	}
	lv := strings.Split(topic, "/")
	if len(lv) != 3 || !id.sites[lv[1]] {
		return false
	}
	return lv[0] == "fhir" && pki.ValidDeviceID(lv[2]) || lv[0] == "security" && lv[2] == exporterClientID
}

// pipeListener is a mochi listener fed with in-process connections
// (net.Pipe) by dial: nothing outside the process reaches it.
type pipeListener struct {
	id    string
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	log   *slog.Logger
}

var _ listeners.Listener = (*pipeListener)(nil)

func newPipeListener(id string) *pipeListener {
	return &pipeListener{id: id, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) ID() string       { return l.id }
func (l *pipeListener) Protocol() string { return "pipe" }
func (l *pipeListener) Address() string  { return "in-process" }

func (l *pipeListener) Init(log *slog.Logger) error {
	l.log = log
	return nil
}

// Serve hands each dialled connection to mochi until Close.
func (l *pipeListener) Serve(establish listeners.EstablishFn) {
	for {
		select {
		case <-l.done:
			return
		case c := <-l.conns:
			go func() {
				if err := establish(l.id, c); err != nil && l.log != nil {
					l.log.Debug("in-process connection ended", "listener", l.id, "error", err)
				}
			}()
		}
	}
}

// Close stops accepting connections.
func (l *pipeListener) Close(closeClients listeners.CloseFn) {
	l.once.Do(func() { close(l.done) })
	closeClients(l.id)
}

// dial opens an in-process connection to the listener.
func (l *pipeListener) dial() (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
		_ = client.Close()
		_ = server.Close()
		return nil, errors.New("broker closed")
	case <-time.After(10 * time.Second):
		_ = client.Close()
		_ = server.Close()
		return nil, errors.New("in-process listener not serving")
	}
}
