package fleet

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// standIn is a real mochi broker with mTLS and a hook that accepts valid
// signed records and answers replays with 0x83: enough of a gateway to test
// the simulator's own logic (seq, reconnects, backlog). It is not the
// gateway: attack verdicts are tested against the real one.
type standIn struct {
	t      *testing.T
	dir    string
	addr   string
	server *mqtt.Server

	mu       sync.Mutex
	accepted map[string][]telemetry.Record // by device, in order
	statuses map[string][]telemetry.Status // status records by device, in order
	lastSeq  map[string]uint64             // records and status records share one window
	replays  int
	versions map[byte]int // protocol versions of connections
	checkCRL bool
	withhold int // PUBACKs still to withhold (the message is dropped, the connection kept)
}

// newPKI creates a PKI directory.
func newPKI(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	return dir
}

func startStandIn(t *testing.T, dir, addr string) *standIn {
	t.Helper()
	s := &standIn{t: t, dir: dir, accepted: map[string][]telemetry.Record{}, versions: map[byte]int{},
		statuses: map[string][]telemetry.Status{}, lastSeq: map[string]uint64{}}
	s.start(addr)
	t.Cleanup(s.stop)
	return s
}

func (s *standIn) start(addr string) {
	t := s.t
	pool, err := pki.LoadPool(filepath.Join(s.dir, pki.FileDeviceCA))
	if err != nil {
		t.Fatal(err)
	}
	var rev *pki.Revocations
	if s.checkCRL {
		ca, err := pki.LoadCert(filepath.Join(s.dir, pki.FileDeviceCA))
		if err != nil {
			t.Fatal(err)
		}
		if rev, err = pki.NewRevocations(filepath.Join(s.dir, pki.FileCRL), ca); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		go rev.Watch(ctx, 20*time.Millisecond)
	}
	tc, err := pki.ServerTLS(filepath.Join(s.dir, pki.FileGateway), filepath.Join(s.dir, pki.FileGatewayKey), pool, rev)
	if err != nil {
		t.Fatal(err)
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = 72 << 10
	caps.MaximumClientWritesPending = 256
	caps.MaximumQos = 1
	srv := mqtt.New(&mqtt.Options{
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		Capabilities: caps,
		InlineClient: true, // the update tests' commands
	})
	if err := srv.AddHook(&standInHook{s: s}, nil); err != nil {
		t.Fatal(err)
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	l := listeners.NewTCP(listeners.Config{ID: "devices", Address: addr, TLSConfig: tc})
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	s.server = srv
	s.addr = l.Address()
}

func (s *standIn) stop() {
	if s.server != nil {
		_ = s.server.Close()
		s.server = nil
	}
}

// records returns a copy of the accepted records of dev.
func (s *standIn) records(dev string) []telemetry.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]telemetry.Record(nil), s.accepted[dev]...)
}

func (s *standIn) count() (n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.accepted {
		n += len(r)
	}
	return n
}

// kick drops every client connection.
func (s *standIn) kick() {
	for _, cl := range s.server.Clients.GetAll() {
		cl.Stop(packets.ErrServerShuttingDown)
	}
}

type standInHook struct {
	mqtt.HookBase
	s *standIn
}

func (h *standInHook) ID() string { return "standin" }

func (h *standInHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish, mqtt.OnSessionEstablished}, []byte{b})
}

func peer(cl *mqtt.Client) *x509.Certificate {
	tc, ok := cl.Net.Conn.(*tls.Conn)
	if !ok || len(tc.ConnectionState().PeerCertificates) == 0 {
		return nil
	}
	return tc.ConnectionState().PeerCertificates[0]
}

func (h *standInHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	c := peer(cl)
	return c != nil && c.Subject.CommonName == string(cl.ID)
}

func (h *standInHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if !write {
		return topic == "devices/"+cl.ID+"/cmd/update"
	}
	return topic == telemetryTopic(cl.ID) || topic == statusTopic(cl.ID)
}

func (h *standInHook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	h.s.mu.Lock()
	h.s.versions[cl.Properties.ProtocolVersion]++
	h.s.mu.Unlock()
}

func (h *standInHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	reject := func(c packets.Code) (packets.Packet, error) {
		if cl.Properties.ProtocolVersion == 5 {
			return pk, c
		}
		return pk, packets.CodeSuccessIgnore
	}
	if cl.Net.Inline {
		return pk, nil // a test's command to a device
	}
	payload, err := envelope.VerifyCert(peer(cl), pk.Payload)
	if err != nil {
		return reject(packets.ErrNotAuthorized)
	}
	if pk.TopicName == statusTopic(cl.ID) {
		return h.status(cl, pk, payload, reject)
	}
	rec, err := telemetry.Decode(payload)
	if err != nil {
		return reject(packets.ErrPayloadFormatInvalid)
	}
	if err := telemetry.DefaultSchemas().Check(rec); err != nil {
		return reject(packets.ErrPayloadFormatInvalid)
	}
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.withhold > 0 {
		s.withhold--
		return pk, packets.ErrRejectPacket // no PUBACK, connection kept
	}
	if last, ok := s.lastSeq[rec.Dev]; ok && rec.Seq <= last {
		s.replays++
		return reject(packets.ErrImplementationSpecificError)
	}
	s.lastSeq[rec.Dev] = rec.Seq
	s.accepted[rec.Dev] = append(s.accepted[rec.Dev], *rec)
	return pk, packets.CodeSuccessIgnore // acknowledged, not delivered to subscribers
}

// waitFor polls cond until it holds or d has passed; on a timeout it fails
// with what and the output of each state function.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool, state ...func() string) {
	t.Helper()
	if testutil.Poll(d, cond) {
		return
	}
	var b strings.Builder
	for _, f := range state {
		b.WriteString("; " + f())
	}
	var dump strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&dump, 1)
	t.Logf("goroutines:\n%s", dump.String())
	t.Fatalf("timed out after %v waiting for %s%s", d, what, b.String())
}

// startStandInRevocations is a stand-in that checks the device CRL at every
// handshake (pki.ServerTLS with Revocations).
func startStandInRevocations(t *testing.T, dir string) *standIn {
	t.Helper()
	s := &standIn{t: t, dir: dir, accepted: map[string][]telemetry.Record{}, versions: map[byte]int{},
		statuses: map[string][]telemetry.Status{}, lastSeq: map[string]uint64{}, checkCRL: true}
	s.start("")
	t.Cleanup(s.stop)
	return s
}

// status takes a status record: checked like the gateway does, in the
// device's one replay window.
func (h *standInHook) status(cl *mqtt.Client, pk packets.Packet, payload []byte, reject func(packets.Code) (packets.Packet, error)) (packets.Packet, error) {
	st, err := telemetry.StatusCheck(payload, &telemetry.RecordCheck{Dev: cl.ID, Now: time.Now()}, nil)
	if err != nil {
		return reject(packets.ErrPayloadFormatInvalid)
	}
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if last, ok := s.lastSeq[st.Dev]; ok && st.Seq <= last {
		s.replays++
		return reject(packets.ErrImplementationSpecificError)
	}
	s.lastSeq[st.Dev] = st.Seq
	s.statuses[st.Dev] = append(s.statuses[st.Dev], *st)
	return pk, packets.CodeSuccessIgnore
}

// statusesOf returns a copy of the accepted status records of dev.
func (s *standIn) statusesOf(dev string) []telemetry.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]telemetry.Status(nil), s.statuses[dev]...)
}
