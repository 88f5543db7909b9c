package cloud

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vitalgate/vitalgate/internal/cloud/cloudtest"
	"github.com/vitalgate/vitalgate/internal/fhirexport/fhirtest"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// exportWait bounds the wait for every record at the FHIR server: the
// server fails and stalls on purpose first.
const exportWait = 60 * time.Second

// standaloneExporter is one `broker fhir` exporter run in the test.
type standaloneExporter struct {
	cancel  context.CancelFunc
	done    chan error
	stopped bool
}

func (e *standaloneExporter) stop(t *testing.T) {
	t.Helper()
	if e.stopped {
		return
	}
	e.stopped = true
	e.cancel()
	select {
	case err := <-e.done:
		if err != nil {
			t.Errorf("exporter: %v", err)
		}
	case <-time.After(waitFor):
		buf := make([]byte, 1<<20)
		t.Errorf("exporter did not stop\n%s", buf[:runtime.Stack(buf, true)])
	}
}

// startStandalone runs `broker fhir` with cfg, logging into lb.
func startStandalone(t *testing.T, cfg FHIRStandalone, lb io.Writer) *standaloneExporter {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.MultiWriter(lb, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	run, err := NewFHIR(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &standaloneExporter{cancel: cancel, done: make(chan error, 1)}
	go func() { e.done <- run(ctx) }()
	t.Cleanup(func() { e.stop(t) })
	return e
}

// Two `broker fhir` exporters share the telemetry of a Mosquitto broker
// through a shared subscription, against a FHIR server that answers 503
// and stalls past the exporters' timeout for a while; one exporter stops
// half way and comes back. Every record reaches the server, none twice,
// redelivered records included, and both exporters did part of the work.
func TestStandaloneExportersShareMosquitto(t *testing.T) {
	dir := testPKI(t)
	m := cloudtest.StartMosquitto(t, dir)
	srv := fhirtest.Start(t, "s3cret")
	srv.StallNext(2, 1500*time.Millisecond)
	srv.FailNext(6)

	cfg := DefaultFHIRStandalone()
	cfg.URL, cfg.PKI = m.URL(), dir
	cfg.Cert, cfg.Key = filepath.Join(dir, pki.FileGatewayClient), filepath.Join(dir, pki.FileGatewayClientKey)
	cfg.FHIR = fhirConfig(t, srv)
	cfg.FHIR.Group, cfg.FHIR.Batch, cfg.FHIR.Timeout = "fx", 4, 500*time.Millisecond
	logs := map[string]*logBuf{"fx-1": {}, "fx-2": {}}
	exporters := map[string]*standaloneExporter{}
	for _, id := range []string{"fx-1", "fx-2"} {
		c := cfg
		c.ClientID = id
		exporters[id] = startStandalone(t, c, logs[id])
	}
	for id, lb := range logs {
		testutil.Eventually(t, waitFor, id+" subscribed", func() bool {
			return strings.Contains(lb.String(), "filter=$share/fx/telemetry/site1/#")
		})
	}

	in := newInbox()
	sub := pahoClient(t, m.URL(), gatewayTLS(t, dir), "fhir-reader", "", "", true)
	wait(t, sub.Subscribe("fhir/site1/#", 1, in.handler), "subscribe fhir/")
	gw := pahoClient(t, m.URL(), gatewayTLS(t, dir), "gw1", "", "", true)
	const n = 30
	publishRange(t, gw, dir, 1, n/2)
	exporters["fx-1"].stop(t) // its session keeps what is queued for it
	publishRange(t, gw, dir, n/2+1, n)
	publishRange(t, gw, dir, 1, 5) // redeliveries
	c := cfg
	c.ClientID = "fx-1"
	exporters["fx-1"] = startStandalone(t, c, logs["fx-1"])

	testutil.Eventually(t, exportWait, "every record at the FHIR server", func() bool {
		return len(srv.Resources("Observation")) >= 2*n && len(srv.Resources("Provenance")) >= n
	})
	for seq := uint64(1); seq <= n; seq++ {
		for _, mdc := range []string{"150456", "149530"} {
			if got := srv.Count("Observation", obsIdent("dev-00001", seq, mdc)); got != 1 {
				t.Errorf("record %d code %s: %d Observations, want 1", seq, mdc, got)
			}
		}
	}
	if got := len(srv.Resources("Observation")); got != 2*n {
		t.Errorf("%d Observations, want %d", got, 2*n)
	}
	for id, lb := range logs {
		if !strings.Contains(lb.String(), "msg=exported") {
			t.Errorf("%s exported nothing: the group did not share the load", id)
		}
	}
	all := logs["fx-1"].String() + logs["fx-2"].String()
	if !strings.Contains(all, "503 Service Unavailable") ||
		!strings.Contains(all, "Client.Timeout exceeded") && !strings.Contains(all, "context canceled") {
		t.Errorf("the server's 503 and stall were not met (retries not exercised)")
	}
	checkBundlesRead(t, in, n)
}

// publishRange publishes dev-00001's records from..to as gateway gw1.
func publishRange(t *testing.T, gw paho.Client, dir string, from, to uint64) {
	t.Helper()
	for seq := from; seq <= to; seq++ {
		publishAccepted(t, gw, signedMessage(t, dir, seq, 90+float64(seq%10)))
	}
}

// checkBundlesRead: a reader of fhir/site1/# got a Bundle of every record.
func checkBundlesRead(t *testing.T, in *inbox, n int) {
	t.Helper()
	seen := map[string]bool{}
	deadline := time.After(waitFor)
	for len(seen) < n {
		select {
		case msg := <-in.ch:
			for seq := 1; seq <= n; seq++ {
				if strings.Contains(string(msg.Payload()), fmt.Sprintf(`"value":"dev-00001:%d"`, seq)) {
					seen[fmt.Sprint(seq)] = true
				}
			}
		case <-deadline:
			t.Fatalf("bundles of %d records read on fhir/, want %d", len(seen), n)
		}
	}
}

// With ca.crt alone, `broker fhir` checks records with the chains the
// gateways publish (retained) on certs/{site}/{device}: a record of the
// device gets its Provenance, a forged one is not exported.
func TestStandaloneChecksPublishedChains(t *testing.T) {
	dir := testPKI(t)
	m := cloudtest.StartMosquitto(t, dir)
	srv := fhirtest.Start(t, "s3cret")
	gw := pahoClient(t, m.URL(), gatewayTLS(t, dir), "gw1", "", "", true)
	wait(t, gw.Publish("certs/site1/dev-00001", 1, true, chainOf(t, dir)), "publish chain")

	cfg := DefaultFHIRStandalone()
	cfg.URL, cfg.CA = m.URL(), filepath.Join(dir, pki.FileCA)
	cfg.Cert, cfg.Key = filepath.Join(dir, pki.FileGatewayClient), filepath.Join(dir, pki.FileGatewayClientKey)
	cfg.ClientID = "fx-chains"
	cfg.FHIR = fhirConfig(t, srv)
	lb := &logBuf{}
	startStandalone(t, cfg, lb)
	testutil.Eventually(t, waitFor, "subscribed", func() bool {
		return strings.Contains(lb.String(), "filter=telemetry/site1/#")
	})
	publishRange(t, gw, dir, 1, 3)
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	publishAccepted(t, gw, signedBy(t, other, 4, 97))
	testutil.Eventually(t, waitFor, "the records exported", func() bool {
		return len(srv.Resources("Provenance")) == 3 && strings.Contains(lb.String(), "record rejected")
	})
	if n := srv.Count("Observation", obsIdent("dev-00001", 4, "150456")); n != 0 {
		t.Errorf("the forged record was exported")
	}
}

// `broker fhir --http` serves the exporter's metrics, also while its
// broker is away (it keeps trying to connect).
func TestStandaloneServesMetrics(t *testing.T) {
	dir := testPKI(t)
	cfg := DefaultFHIRStandalone()
	cfg.URL, cfg.PKI, cfg.HTTP, cfg.ClientID = "ssl://"+cloudtest.FreePort(t), dir, "127.0.0.1:0", "fx-metrics"
	cfg.FHIR.Sites = []string{"site1"}
	lb := &logBuf{}
	startStandalone(t, cfg, lb)
	var addr string
	testutil.Eventually(t, waitFor, "metrics served", func() bool {
		_, rest, ok := strings.Cut(lb.String(), "msg=metrics http=")
		addr, _, _ = strings.Cut(rest, "\n")
		return ok
	})
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{`vitalgate_fhir_exported_total{result="verified"} 0`, "vitalgate_fhir_no_patient_total 0",
		`vitalgate_fhir_retries_total{target="server"} 0`, "go_goroutines", "vitalgate_build_info{"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// `broker fhir` against NATS server with MQTT (JetStream keeps the
// sessions), a deployment whose cloud is not a VitalGate broker: records
// published there are exported once each, with their Provenance and
// patient, and their Bundles are published back on fhir/site1/{device};
// a device the patient map lacks is exported without a subject and
// reported in a no_patient event on security/site1/{client ID}.
func TestStandaloneExporterAtNATS(t *testing.T) {
	dir := testPKI(t)
	nats := cloudtest.StartNATS(t, dir, 1)[0]
	srv := fhirtest.Start(t, "s3cret")
	srv.FailNext(2)

	// NATS takes MQTT CONNECTs once JetStream is ready.
	var gw paho.Client
	testutil.Eventually(t, exportWait, "a client connected to NATS", func() bool {
		c, err := pahoConnect(nats.URL(), gatewayTLS(t, dir), "gw1", "", "", true)
		gw = c
		return err == nil
	})
	t.Cleanup(func() { gw.Disconnect(100) })
	in, events := newInbox(), newInbox()
	reader := pahoClient(t, nats.URL(), gatewayTLS(t, dir), "fhir-reader", "", "", true)
	wait(t, reader.Subscribe("fhir/site1/#", 1, in.handler), "subscribe fhir/")
	wait(t, reader.Subscribe("security/site1/#", 1, events.handler), "subscribe security/")

	cfg := DefaultFHIRStandalone()
	cfg.URL, cfg.PKI, cfg.ClientID = nats.URL(), dir, "fx-nats"
	cfg.Cert, cfg.Key = filepath.Join(dir, pki.FileGatewayClient), filepath.Join(dir, pki.FileGatewayClientKey)
	cfg.FHIR = fhirConfig(t, srv)
	lb := &logBuf{}
	startStandalone(t, cfg, lb)
	testutil.Eventually(t, exportWait, "subscribed", func() bool {
		return strings.Contains(lb.String(), "filter=telemetry/site1/#")
	})

	const n = 10
	publishRange(t, gw, dir, 1, n)
	publishRange(t, gw, dir, 1, 2) // redeliveries
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	publishAccepted(t, gw, unknownDevice(t, other))

	testutil.Eventually(t, exportWait, "every record at the FHIR server", func() bool {
		return len(srv.Resources("Provenance")) >= n && len(srv.Resources("Observation")) >= 2*n+1
	})
	for seq := uint64(1); seq <= n; seq++ {
		for _, mdc := range []string{"150456", "149530"} {
			if got := srv.Count("Observation", obsIdent("dev-00001", seq, mdc)); got != 1 {
				t.Errorf("record %d code %s: %d Observations, want 1", seq, mdc, got)
			}
		}
	}
	if got := len(srv.Resources("Provenance")); got != n {
		t.Errorf("%d Provenances, want one per verified record (%d)", got, n)
	}
	mapped, unmapped := 0, 0
	for _, o := range srv.Resources("Observation") {
		switch ob := string(o); {
		case strings.Contains(ob, `"value":"dev-00002:1"`):
			unmapped++
			if strings.Contains(ob, `"subject"`) {
				t.Errorf("the unmapped device's Observation has a subject: %.300s", ob)
			}
		case strings.Contains(ob, `"value":"dev-00001:`):
			mapped++
			if !strings.Contains(ob, `"reference":"Patient/p-1"`) {
				t.Errorf("an Observation of dev-00001 without its patient: %.300s", ob)
			}
		}
	}
	if mapped != 2*n || unmapped != 2 {
		t.Errorf("%d Observations of dev-00001 (want %d), %d of dev-00002 (want 2)", mapped, 2*n, unmapped)
	}
	if got := srv.Count("Observation", obsIdent("dev-00002", 1, "150456")); got != 1 {
		t.Errorf("the unmapped device's record: %d Observations, want 1 (exported without a subject)", got)
	}
	checkBundlesRead(t, in, n)
	select {
	case m := <-events.ch:
		if m.Topic() != "security/site1/fx-nats" || !strings.Contains(string(m.Payload()), `"verdict":"no_patient"`) ||
			!strings.Contains(string(m.Payload()), `"dev":"dev-00002"`) {
			t.Errorf("event on %s: %s", m.Topic(), m.Payload())
		}
	case <-time.After(waitFor):
		t.Error("no no_patient event at NATS")
	}
}
