package fhirexport

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vitalgate/vitalgate/internal/fhir"
	"github.com/vitalgate/vitalgate/internal/fhirexport/fhirtest"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/testutil"
	"github.com/vitalgate/vitalgate/internal/wire"
)

func TestConfigValidate(t *testing.T) {
	good := Default()
	good.Enabled, good.Sites = true, []string{"site1"}
	good.Patients = map[string]map[string]string{"site1": {"dev-00001": "Patient/p-1"}}
	if err := good.Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	if err := Default().Validate(); err != nil {
		t.Fatalf("the default (off) config: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no sites", func(c *Config) { c.Sites = nil }, "fhir.sites: required"},
		{"wildcard site", func(c *Config) { c.Sites = []string{"site1", "#"} }, `"#" is not a site name`},
		{"patients of another site", func(c *Config) { c.Patients["site9"] = map[string]string{} }, `site "site9" is not in sites`},
		{"bad device", func(c *Config) { c.Patients["site1"]["a/b"] = "Patient/1" }, `"a/b" is not a device ID`},
		{"bad patient", func(c *Config) { c.Patients["site1"]["dev-00001"] = "Group/1" }, "Patient/{id}"},
		{"nowhere to export", func(c *Config) { c.Publish = false }, "nothing to export to"},
		{"plain http", func(c *Config) { c.Server = "http://fhir.example" }, "not an https:// URL"},
		{"token without server", func(c *Config) { c.ServerTokenFile = "t" }, "fhir.server: required with"},
		{"timeout", func(c *Config) { c.Timeout = 0 }, "fhir.timeout"},
		{"backoff", func(c *Config) { c.MaxBackoff = 2 * time.Hour }, "fhir.max_backoff"},
		{"batch", func(c *Config) { c.Batch = 1001 }, "fhir.batch"},
		{"group", func(c *Config) { c.Group = "a/b" }, "fhir.group"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			c.Patients = map[string]map[string]string{"site1": {"dev-00001": "Patient/p-1"}}
			tc.edit(&c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %v, want %q", err, tc.want)
			}
		})
	}
}

// bundleOf is the Bundle of dev's record seq.
func bundleOf(t *testing.T, dev string, seq uint64) []byte {
	t.Helper()
	rec := telemetry.Record{V: 1, Dev: dev, Seq: seq, TS: 1767225600000, Kind: "temp",
		Obs: []telemetry.Observation{{Code: telemetry.CodeTemp, Val: telemetry.Scalar(36.9), Unit: "Cel"}}}
	b, err := fhir.Bundle(fhir.Input{Msg: &wire.Message{V: 1, ID: wire.ID(dev, seq), Site: "site1", Rec: rec, Sig: []byte{1}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func serverConfig(t *testing.T, srv *fhirtest.Server) Config {
	t.Helper()
	c := Default()
	c.Enabled, c.Sites, c.Server, c.ServerCA = true, []string{"site1"}, srv.URL, srv.CAFile
	if srv.Token != "" {
		c.ServerTokenFile = filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(c.ServerTokenFile, []byte(srv.Token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c.Timeout, c.MaxBackoff = 300*time.Millisecond, 20*time.Millisecond
	return c
}

func TestServerPostAnswers(t *testing.T) {
	srv := fhirtest.Start(t, "s3cret")
	s, err := newServer(serverConfig(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	b := bundleOf(t, "dev-00001", 1)
	var refused *refusedError
	srv.FailNext(1)
	if err := s.post(ctx, b); err == nil || errors.As(err, &refused) {
		t.Errorf("503: %v, want an error to retry", err)
	}
	srv.StallNext(1, time.Second)
	if err := s.post(ctx, b); err == nil || errors.As(err, &refused) {
		t.Errorf("stall: %v, want a timeout to retry", err)
	}
	if err := s.post(ctx, b); err != nil {
		t.Fatalf("post: %v", err)
	}
	if n := srv.Count("Observation", fhir.SystemObservation+"|dev-00001:1/150364"); n != 1 {
		t.Errorf("%d Observations after a stalled and a good post, want 1", n)
	}
	srv.Refuse(func([]byte) bool { return true })
	if err := s.post(ctx, b); !errors.As(err, &refused) || refused.status != 400 || !strings.Contains(err.Error(), "refused on purpose") {
		t.Errorf("400: %v, want a refusal with the server's diagnostics", err)
	}
	srv.Refuse(nil)
	// A token the server does not take is retried, never a refusal, and
	// read again from its file after each 401: a renewed token is used
	// without a restart.
	good := s.token
	if err := os.WriteFile(s.tokenFile, []byte("expired\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.token = "expired"
	if err := s.post(ctx, b); err == nil || errors.As(err, &refused) || !strings.Contains(err.Error(), "401") ||
		!strings.Contains(err.Error(), "server_token_file") || strings.Contains(err.Error(), "expired") {
		t.Errorf("wrong token: %v, want a 401 to retry, without the token", err)
	}
	if err := os.WriteFile(s.tokenFile, []byte(good+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.post(ctx, b); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("the 401's retry: %v, want 401 again (the token was read after it)", err)
	}
	if err := s.post(ctx, b); err != nil {
		t.Errorf("after the token file was renewed: %v", err)
	}
	if err := os.Remove(s.tokenFile); err != nil {
		t.Fatal(err)
	}
	s.token = "expired"
	if err := s.post(ctx, b); err == nil || errors.As(err, &refused) || !strings.Contains(err.Error(), "reading the token again") {
		t.Errorf("token file gone: %v, want a 401 to retry that says the file could not be read", err)
	}
	if s.token != "expired" {
		t.Error("a token file that cannot be read replaced the token in use")
	}
}

func TestNewServerFiles(t *testing.T) {
	srv := fhirtest.Start(t, "s3cret")
	c := serverConfig(t, srv)
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(*Config){
		"no CA file":    func(c *Config) { c.ServerCA = "/nonexistent" },
		"CA not PEM":    func(c *Config) { c.ServerCA = empty },
		"no token file": func(c *Config) { c.ServerTokenFile = "/nonexistent" },
		"empty token":   func(c *Config) { c.ServerTokenFile = empty },
	} {
		cc := c
		edit(&cc)
		if _, err := newServer(cc); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Without server_ca the system roots are used: the stand-in's
	// certificate is not trusted.
	c.ServerCA = ""
	s, err := newServer(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.post(context.Background(), bundleOf(t, "dev-00001", 1)); err == nil {
		t.Error("an untrusted server certificate accepted")
	}
}

func TestMergeKeepsEachEntryOnce(t *testing.T) {
	a, b := bundleOf(t, "dev-00001", 1), bundleOf(t, "dev-00001", 2)
	out, err := merge([][]byte{a, b, a})
	if err != nil {
		t.Fatal(err)
	}
	var bun struct {
		Type  string
		Entry []struct{ FullURL string }
	}
	if err := json.Unmarshal(out, &bun); err != nil {
		t.Fatal(err)
	}
	if bun.Type != "transaction" || len(bun.Entry) != 3 {
		t.Errorf("merged %d entries of type %q, want the Device once and two Observations", len(bun.Entry), bun.Type)
	}
}

func TestBackoffBounded(t *testing.T) {
	b := newBackoff(40 * time.Millisecond)
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		start := time.Now()
		if !b.wait(ctx) {
			t.Fatal("wait ended early")
		}
		if d := time.Since(start); d < 10*time.Millisecond {
			t.Errorf("wait %d took %s, want at least half the window", i, d)
		}
	}
	if b.window != 40*time.Millisecond {
		t.Errorf("window %s, want the maximum", b.window)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if b.wait(cctx) {
		t.Error("wait went on after its context ended")
	}
}

// ackMessage is a delivery that records its acknowledgement.
type ackMessage struct {
	topic   string
	payload []byte
	mu      sync.Mutex
	acked   int
}

func (m *ackMessage) Duplicate() bool   { return false }
func (m *ackMessage) Qos() byte         { return 1 }
func (m *ackMessage) Retained() bool    { return false }
func (m *ackMessage) Topic() string     { return m.topic }
func (m *ackMessage) MessageID() uint16 { return 1 }
func (m *ackMessage) Payload() []byte   { return m.payload }
func (m *ackMessage) Ack() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.acked++
}

type okChecker struct{}

func (okChecker) Check(string, *wire.Message) (Verdict, string) { return Unverified, "no certificate" }
func (okChecker) Chain(string, []byte) error                    { return nil }

// A Bundle the server refuses for good is isolated: the batch is posted
// record by record, the others are stored, every record is acknowledged,
// the refused one counted as such.
func TestPoisonRecordIsolated(t *testing.T) {
	srv := fhirtest.Start(t, "s3cret")
	srv.Refuse(func(b []byte) bool { return bytes.Contains(b, []byte("dev-00002")) })
	cfg := serverConfig(t, srv)
	cfg.Publish, cfg.Batch = false, 10
	var logs bytes.Buffer
	e, err := New(cfg, Options{Conn: Conn{URL: "ssl://unused:1", ClientID: "x"}, Checker: okChecker{},
		Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var batch []*ackMessage
	for _, dev := range []string{"dev-00001", "dev-00002", "dev-00003"} {
		a := &wire.Accepted{Site: "site1", GW: "gw1", RX: 1767225600000, Sig: []byte{0xd2},
			Rec: &telemetry.Record{V: 1, Dev: dev, Seq: 1, TS: 1767225600000, Kind: "temp",
				Obs: []telemetry.Observation{{Code: telemetry.CodeTemp, Val: telemetry.Scalar(37), Unit: "Cel"}}}}
		p, err := wire.Encode(wire.JSON, a)
		if err != nil {
			t.Fatal(err)
		}
		batch = append(batch, &ackMessage{topic: wire.Topic("site1", dev, "temp"), payload: p})
	}
	batch = append(batch, &ackMessage{topic: "telemetry/site1/dev-00004/temp", payload: []byte("{}")})
	var msgs []paho.Message
	for _, m := range batch {
		msgs = append(msgs, m)
	}
	if err := e.export(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	for _, m := range batch {
		if m.acked != 1 {
			t.Errorf("%s acknowledged %d times, want once", m.topic, m.acked)
		}
	}
	if srv.Count("Observation", fhir.SystemObservation+"|dev-00001:1/150364") != 1 ||
		srv.Count("Observation", fhir.SystemObservation+"|dev-00003:1/150364") != 1 ||
		srv.Count("Observation", fhir.SystemObservation+"|dev-00002:1/150364") != 0 {
		t.Errorf("stored %v", srv.Resources("Observation"))
	}
	for r, n := range map[string]float64{resultUnverified: 2, resultRefused: 1, resultMalformed: 1} {
		if got := promtest.ToFloat64(e.m.exported.WithLabelValues(r)); got != n {
			t.Errorf("result %s: %v, want %v", r, got, n)
		}
	}
	if got := promtest.ToFloat64(e.m.noPatient); got != 3 {
		t.Errorf("no patient: %v, want 3", got)
	}
	if n := strings.Count(logs.String(), "device not in the site's patient map"); n != 3 {
		t.Errorf("%d no-patient log lines, want one per device", n)
	}
	if strings.Contains(logs.String(), "s3cret") {
		t.Error("the server token is in the log")
	}
}

// A record whose device ID or code would change what a conditional update
// or create matches (a ',' makes a FHIR search an OR: "x,dev-00001" finds
// dev-00001's Device, which the PUT would then overwrite), or whose device
// ID is no topic level of fhir/, is malformed: not posted, not published
// (a publish the broker refuses would be retried for ever), acknowledged.
func TestHostileIdentifiersNotExported(t *testing.T) {
	srv := fhirtest.Start(t, "s3cret")
	cfg := serverConfig(t, srv)
	cfg.Batch = 10 // Publish stays on: a bundle reaching publish would block on the unused broker
	e, err := New(cfg, Options{Conn: Conn{URL: "ssl://unused:1", ClientID: "x"}, Checker: okChecker{},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var batch []*ackMessage
	for _, tc := range []struct{ dev, code string }{
		{"x,dev-00001", telemetry.CodeTemp},
		{"x|y", telemetry.CodeTemp},
		{"dev-00009", "MDC_X,urn:vitalgate:observation|dev-00001:1/150364"},
	} {
		a := &wire.Accepted{Site: "site1", GW: "gw1", RX: 1767225600000, Sig: []byte{0xd2},
			Rec: &telemetry.Record{V: 1, Dev: tc.dev, Seq: 1, TS: 1767225600000, Kind: "temp",
				Obs: []telemetry.Observation{{Code: tc.code, Val: telemetry.Scalar(37), Unit: "Cel"}}}}
		p, err := wire.Encode(wire.JSON, a)
		if err != nil {
			t.Fatal(err)
		}
		batch = append(batch, &ackMessage{topic: "telemetry/site1/" + tc.dev + "/temp", payload: p})
	}
	var msgs []paho.Message
	for _, m := range batch {
		msgs = append(msgs, m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.export(ctx, msgs); err != nil {
		t.Fatalf("export: %v (a hostile record reached the publish)", err)
	}
	for _, m := range batch {
		if m.acked != 1 {
			t.Errorf("%s acknowledged %d times, want once", m.topic, m.acked)
		}
	}
	if got := promtest.ToFloat64(e.m.exported.WithLabelValues(resultMalformed)); got != 3 {
		t.Errorf("malformed: %v, want 3", got)
	}
	if n := srv.Requests(); n != 0 {
		t.Errorf("%d requests to the FHIR server, want none", n)
	}
}

// The bearer token goes to the configured https server only: a redirect
// to plain http (where the same host would get the Authorization header
// again, in the clear) is refused, as a failure to retry.
func TestServerRedirectToHTTPRefused(t *testing.T) {
	var leaked atomic.Value
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaked.Store(r.Header.Get("Authorization"))
		w.WriteHeader(http.StatusOK)
	}))
	defer plain.Close()
	tls := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+"/r4", http.StatusTemporaryRedirect)
	}))
	defer tls.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tls.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := Default()
	c.Server, c.ServerCA, c.ServerTokenFile = tls.URL, ca, tok
	s, err := newServer(c)
	if err != nil {
		t.Fatal(err)
	}
	err = s.post(context.Background(), bundleOf(t, "dev-00001", 1))
	if v, _ := leaked.Load().(string); v != "" {
		t.Errorf("the bearer token went to %s in the clear: %q", plain.URL, v)
	}
	if err == nil {
		t.Error("a redirect to http:// counted as stored")
	}
}

// A server that refuses the exporter's token (401) loses nothing: no
// record is acknowledged while it does, and once the token file holds a
// token it takes, every record is stored once and none counted refused.
func TestWrongTokenLosesNothing(t *testing.T) {
	srv := fhirtest.Start(t, "s3cret")
	cfg := serverConfig(t, srv)
	cfg.Publish, cfg.Batch = false, 10
	if err := os.WriteFile(cfg.ServerTokenFile, []byte("expired\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs testutil.SyncBuffer
	e, err := New(cfg, Options{Conn: Conn{URL: "ssl://unused:1", ClientID: "x"}, Checker: okChecker{},
		Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var batch []*ackMessage
	var msgs []paho.Message
	for seq := uint64(1); seq <= 3; seq++ {
		m := &ackMessage{topic: wire.Topic("site1", "dev-00001", "temp"), payload: tempMessage(t, "dev-00001", seq)}
		batch, msgs = append(batch, m), append(msgs, m)
	}
	done := make(chan error, 1)
	go func() { done <- e.export(context.Background(), msgs) }()
	deadline := time.Now().Add(10 * time.Second)
	for srv.Requests() < 4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	for _, m := range batch {
		m.mu.Lock()
		if m.acked != 0 {
			t.Errorf("%s acknowledged while the server refused the token", m.topic)
		}
		m.mu.Unlock()
	}
	if err := os.WriteFile(cfg.ServerTokenFile, []byte(srv.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("export did not finish once the token was renewed")
	}
	for seq, m := range batch {
		if m.acked != 1 {
			t.Errorf("record %d acknowledged %d times", seq+1, m.acked)
		}
		if n := srv.Count("Observation", fhir.SystemObservation+"|"+wire.ID("dev-00001", uint64(seq+1))+"/150364"); n != 1 {
			t.Errorf("record %d: %d Observations", seq+1, n)
		}
	}
	if got := promtest.ToFloat64(e.m.exported.WithLabelValues(resultRefused)); got != 0 {
		t.Errorf("%v records counted refused", got)
	}
	if got := promtest.ToFloat64(e.m.retries.WithLabelValues("server")); got < 3 {
		t.Errorf("%v retries counted", got)
	}
	if l := logs.String(); !strings.Contains(l, "401") || strings.Contains(l, "expired") || strings.Contains(l, srv.Token) {
		t.Errorf("the log should name the 401 and no token:\n%s", l)
	}
}

// tempMessage is a cloud message (JSON) of dev's temperature record seq.
func tempMessage(t *testing.T, dev string, seq uint64) []byte {
	t.Helper()
	a := &wire.Accepted{Site: "site1", GW: "gw1", RX: 1767225600000, Sig: []byte{0xd2},
		Rec: &telemetry.Record{V: 1, Dev: dev, Seq: seq, TS: 1767225600000, Kind: "temp",
			Obs: []telemetry.Observation{{Code: telemetry.CodeTemp, Val: telemetry.Scalar(37), Unit: "Cel"}}}}
	p, err := wire.Encode(wire.JSON, a)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
