package cloud

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/fhir"
	"github.com/vitalgate/vitalgate/internal/fhirexport"
	"github.com/vitalgate/vitalgate/internal/fhirexport/fhirtest"
	"github.com/vitalgate/vitalgate/internal/fleet"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/testutil"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// fhirConfig is an enabled exporter of site1 posting to srv, dev-00001
// mapped to Patient/p-1, with short timeouts and backoff.
func fhirConfig(t *testing.T, srv *fhirtest.Server) fhirexport.Config {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "fhir.token")
	if err := os.WriteFile(tokenFile, []byte(srv.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := fhirexport.Default()
	c.Enabled, c.Sites = true, []string{"site1"}
	c.Patients = map[string]map[string]string{"site1": {"dev-00001": "Patient/p-1"}}
	c.Server, c.ServerCA, c.ServerTokenFile = srv.URL, srv.CAFile, tokenFile
	c.Timeout, c.MaxBackoff, c.Batch = 2*time.Second, 50*time.Millisecond, 5
	return c
}

// metric reads one sample of the broker's /metrics (0 when absent).
func metric(t *testing.T, b *Broker, sample string) float64 {
	t.Helper()
	for _, l := range strings.Split(scrape(t, b), "\n") {
		if v, ok := strings.CutPrefix(l, sample+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// obsIdent is the identifier of dev's record seq's Observation of MDC code.
func obsIdent(dev string, seq uint64, mdc string) string {
	return fhir.SystemObservation + "|" + wire.ID(dev, seq) + "/" + mdc
}

func publishAccepted(t *testing.T, gw paho.Client, a *wire.Accepted) {
	t.Helper()
	payload, err := wire.Encode(wire.CBOR, a)
	if err != nil {
		t.Fatal(err)
	}
	wait(t, gw.Publish(wire.Topic(a.Site, a.Rec.Dev, a.Rec.Kind), 1, false, payload), "publish")
}

// The broker's own exporter: verified records get a Provenance and their
// patient, an unknown device is exported without either, a forged record
// and garbage are not exported, a redelivered record makes no second
// Observation, a server that answers 503 at first loses nothing, and the
// bundles are published on fhir/{site}/{device} for apps.
func TestBrokerExportsFHIR(t *testing.T) {
	dir := testPKI(t)
	srv := fhirtest.Start(t, "s3cret")
	srv.StallNext(1, 3*time.Second) // past the 2 s timeout; then applied: the retry must not double it
	srv.FailNext(3)
	cfg := testConfig(dir, "")
	cfg.FHIR = fhirConfig(t, srv)
	b, _ := startBroker(t, cfg)

	in := newInbox()
	app := pahoClient(t, "ssl://"+b.AppsAddr(), appTLS(t, dir), "clinic-app", "app", mint(t, dir, "site1"), true)
	wait(t, app.Subscribe("fhir/site1/#", 1, in.handler), "subscribe fhir/")
	events := newInbox()
	op := pahoClient(t, "ssl://"+b.AppsAddr(), appTLS(t, dir), "ops-app", "app", mintRole(t, dir, "bob", pki.RoleOperator, "site1"), true)
	wait(t, op.Subscribe("security/site1/#", 1, events.handler), "subscribe security/")
	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)

	for seq := uint64(1); seq <= 5; seq++ {
		publishAccepted(t, gw, signedMessage(t, dir, seq, 90+float64(seq)))
	}
	publishAccepted(t, gw, signedMessage(t, dir, 1, 91)) // a redelivery
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	publishAccepted(t, gw, signedBy(t, other, 6, 97)) // forged: not the device's key
	publishAccepted(t, gw, unknownDevice(t, other))   // a device without a certificate or patient
	wait(t, gw.Publish("telemetry/site1/dev-00001/spo2", 1, false, []byte("garbage")), "publish garbage")

	want := map[string]float64{"verified": 6, "unverified": 1, "rejected": 1, "malformed": 1}
	testutil.Eventually(t, waitFor, "every record exported or refused", func() bool {
		for r, n := range want {
			if metric(t, b, `vitalgate_fhir_exported_total{result="`+r+`"}`) != n {
				return false
			}
		}
		return true
	})
	for seq := uint64(1); seq <= 5; seq++ {
		for _, mdc := range []string{"150456", "149530"} {
			if n := srv.Count("Observation", obsIdent("dev-00001", seq, mdc)); n != 1 {
				t.Errorf("record %d code %s: %d Observations, want 1", seq, mdc, n)
			}
		}
	}
	if n := srv.Count("Observation", obsIdent("dev-00001", 6, "150456")); n != 0 {
		t.Errorf("the forged record was exported (%d)", n)
	}
	checkServerResources(t, srv)
	if metric(t, b, `vitalgate_fhir_retries_total{target="server"}`) < 1 || metric(t, b, "vitalgate_fhir_no_patient_total") != 1 {
		t.Errorf("retries or no-patient count wrong:\n%s", scrape(t, b))
	}
	checkPublished(t, in)
	checkNoPatientEvent(t, events)
}

// checkNoPatientEvent: the exporter reported dev-00002, which the patient
// map lacks, in one security event on security/site1/{its client ID}.
func checkNoPatientEvent(t *testing.T, in *inbox) {
	t.Helper()
	select {
	case m := <-in.ch:
		var ev struct {
			V                        int
			GW, Dev, Verdict, Detail string
		}
		if err := json.Unmarshal(m.Payload(), &ev); err != nil {
			t.Fatalf("%s: %v: %s", m.Topic(), err, m.Payload())
		}
		if m.Topic() != fhirexport.EventTopic("site1", exporterClientID) || ev.V != 1 || ev.GW != exporterClientID ||
			ev.Dev != "dev-00002" || ev.Verdict != fhirexport.VerdictNoPatient || !strings.Contains(ev.Detail, "patient map") {
			t.Errorf("event on %s: %s", m.Topic(), m.Payload())
		}
	case <-time.After(waitFor):
		t.Fatal("no no_patient event for dev-00002")
	}
	select {
	case m := <-in.ch:
		t.Errorf("a second event on %s: %s", m.Topic(), m.Payload())
	case <-time.After(200 * time.Millisecond):
	}
}

// checkServerResources: dev-00001's Observations have their patient and a
// Provenance each with the COSE_Sign1; dev-00002's has no subject.
func checkServerResources(t *testing.T, srv *fhirtest.Server) {
	t.Helper()
	provs := srv.Resources("Provenance")
	if len(provs) != 5 {
		t.Errorf("%d Provenances, want one per verified record (5)", len(provs))
	}
	for _, p := range provs {
		var pv struct {
			Signature []struct{ SigFormat, Data string }
			Target    []struct{ Reference string }
		}
		_ = json.Unmarshal(p, &pv)
		if len(pv.Signature) != 1 || pv.Signature[0].SigFormat != "application/cose" || len(pv.Target) != 2 ||
			!strings.HasPrefix(pv.Target[0].Reference, "Observation/") {
			t.Errorf("provenance %s", p)
		}
		if _, err := base64.StdEncoding.DecodeString(pv.Signature[0].Data); err != nil {
			t.Errorf("signature data: %v", err)
		}
	}
	for _, o := range srv.Resources("Observation") {
		var ob struct {
			Subject    *struct{ Reference string }
			Device     struct{ Reference string }
			Identifier []struct{ Value string }
		}
		_ = json.Unmarshal(o, &ob)
		dev1 := strings.HasPrefix(ob.Identifier[0].Value, "dev-00001:")
		switch {
		case dev1 && (ob.Subject == nil || ob.Subject.Reference != "Patient/p-1"):
			t.Errorf("dev-00001's Observation without its patient: %s", o)
		case !dev1 && ob.Subject != nil:
			t.Errorf("dev-00002's Observation has a subject: %s", o)
		case !strings.HasPrefix(ob.Device.Reference, "Device/"):
			t.Errorf("device reference not resolved: %s", o)
		}
	}
	if n := len(srv.Resources("Device")); n != 2 {
		t.Errorf("%d Devices, want 2", n)
	}
}

// checkPublished: the app reads the bundles of both devices on fhir/.
func checkPublished(t *testing.T, in *inbox) {
	t.Helper()
	seen := map[string]bool{}
	deadline := time.After(waitFor)
	for !seen["fhir/site1/dev-00001"] || !seen["fhir/site1/dev-00002"] {
		select {
		case m := <-in.ch:
			var bun struct{ ResourceType, Type string }
			if err := json.Unmarshal(m.Payload(), &bun); err != nil || bun.Type != "transaction" {
				t.Fatalf("%s: not a transaction Bundle: %.200s", m.Topic(), m.Payload())
			}
			seen[m.Topic()] = true
		case <-deadline:
			t.Fatalf("bundles published on %v only", seen)
		}
	}
}

// The exporter's position is its persistent session in the broker's
// store: records published while the FHIR server is down, and not
// exported when the broker stops, are exported after a restart.
func TestBrokerExporterResumesAfterRestart(t *testing.T) {
	dir := testPKI(t)
	srv := fhirtest.Start(t, "s3cret")
	srv.FailNext(1 << 30)
	data := t.TempDir()
	cfg := testConfig(dir, data)
	cfg.FHIR = fhirConfig(t, srv)
	cfg.FHIR.Publish = false
	b, _ := startBroker(t, cfg)
	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	for seq := uint64(1); seq <= 3; seq++ {
		publishAccepted(t, gw, signedMessage(t, dir, seq, 95))
	}
	testutil.Eventually(t, waitFor, "the server tried", func() bool { return srv.Requests() > 2 })
	gw.Disconnect(100)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(srv.Resources("Observation")); n != 0 {
		t.Fatalf("%d Observations stored by a failing server", n)
	}

	srv.FailNext(0)
	b2, _ := startBroker(t, cfg)
	testutil.Eventually(t, waitFor, "the records exported after the restart", func() bool {
		return len(srv.Resources("Observation")) == 6
	})
	for seq := uint64(1); seq <= 3; seq++ {
		if n := srv.Count("Observation", obsIdent("dev-00001", seq, "150456")); n != 1 {
			t.Errorf("record %d: %d Observations", seq, n)
		}
	}
	_ = b2
}

func TestExporterACL(t *testing.T) {
	id := &identity{kind: kindExporter, name: "fhir", sites: map[string]bool{"site1": true}}
	for topic, ok := range map[string]bool{
		"telemetry/site1/#": true, "certs/site1/#": true, "telemetry/site2/#": false, "security/site1/#": false,
		"jobs/site1/+": false, "#": false, "telemetry/+/#": false,
	} {
		if exporterMayRead(id, topic) != ok {
			t.Errorf("read %s: want %v", topic, ok)
		}
	}
	for topic, ok := range map[string]bool{
		"fhir/site1/dev-00001": true, "fhir/site2/dev-00001": false, "fhir/site1/dev-00001/x": false,
		"telemetry/site1/dev-00001/spo2": false, "fhir/site1/+": false, "jobs/site1/j1": false,
	} {
		if exporterMayPublish(id, topic) != ok {
			t.Errorf("publish %s: want %v", topic, ok)
		}
	}
	gwID := &identity{kind: kindGateway, name: "gw1", site: "site1"}
	if gatewayMayPublish(gwID, "fhir/site1/gw1") {
		t.Error("a gateway may publish on fhir/")
	}
	app := &identity{kind: kindApp, name: "alice", role: pki.RoleClinician, sites: map[string]bool{"site1": true}}
	if !appMayRead(app, "fhir/site1/#") || appMayRead(app, "fhir/site2/#") {
		t.Error("apps read fhir/ of their sites only")
	}
	if appMayPublish(&identity{kind: kindApp, name: "op", role: "operator", sites: app.sites, exp: time.Now().Add(time.Hour)},
		"fhir/site1/dev-00001", time.Now()) {
		t.Error("an operator may publish on fhir/")
	}
}

// No app may take the exporter's client ID (it would lock the exporter out
// of its session).
func TestExporterClientIDReserved(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, ""))
	c, err := rawDial(t, b.AppsAddr(), appTLS(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	if code, err := c.connect(exporterClientID, "app", mint(t, dir, "site1")); err == nil && code == 0 {
		t.Fatal("an app connected under the exporter's client ID")
	}
	if metric(t, b, `vitalgate_cloud_auth_failures_total{kind="app",reason="client_id_in_use"}`) != 1 {
		t.Errorf("refusal not counted:\n%s", scrape(t, b))
	}
}

// Every kind of the simulated fleet goes through the broker's exporter,
// in both message formats: the ECG's full waveform included.
func TestBrokerExportsEveryKind(t *testing.T) {
	dir := testPKI(t)
	srv := fhirtest.Start(t, "s3cret")
	cfg := testConfig(dir, "")
	cfg.FHIR = fhirConfig(t, srv)
	b, _ := startBroker(t, cfg)
	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	_, keyFile := pki.DevicePaths(dir, "dev-00001")
	key, err := pki.LoadKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	kinds := []string{"spo2", "bp", "glucose", "temp", "weight", "ecg"}
	for i, kind := range kinds {
		d, err := fleet.NewDevice("dev-00001", kind, 3)
		if err != nil {
			t.Fatal(err)
		}
		d.SetSeq(uint64(10 * i))
		rec := d.Next()
		raw, err := telemetry.Encode(&rec)
		if err != nil {
			t.Fatal(err)
		}
		sig, err := envelope.Sign(key, "dev-00001", raw)
		if err != nil {
			t.Fatal(err)
		}
		format := []wire.Format{wire.CBOR, wire.JSON}[i%2]
		payload, err := wire.Encode(format, &wire.Accepted{Site: "site1", GW: "gw1", RX: rec.TS, Rec: &rec, Raw: raw, Sig: sig})
		if err != nil {
			t.Fatal(err)
		}
		wait(t, gw.Publish(wire.Topic("site1", "dev-00001", kind), 1, false, payload), "publish "+kind)
	}
	testutil.Eventually(t, waitFor, "every kind exported and verified", func() bool {
		return len(srv.Resources("Provenance")) == len(kinds)
	})
	var ecg struct {
		ValueSampledData struct {
			Period json.Number
			Data   string
		}
	}
	for _, o := range srv.Resources("Observation") {
		if strings.Contains(string(o), "valueSampledData") {
			_ = json.Unmarshal(o, &ecg)
		}
	}
	if n := len(strings.Fields(ecg.ValueSampledData.Data)); n < 100 || ecg.ValueSampledData.Period == "" {
		t.Errorf("the ECG arrived with %d samples, period %q", n, ecg.ValueSampledData.Period)
	}
}

// unknownDevice is record 1 of dev-00002, a device with no certificate and
// no patient, signed with key.
func unknownDevice(t *testing.T, key crypto.Signer) *wire.Accepted {
	t.Helper()
	a := signedBy(t, key, 1, 95)
	a.Rec.Dev = "dev-00002"
	var err error
	if a.Raw, err = telemetry.Encode(a.Rec); err != nil {
		t.Fatal(err)
	}
	if a.Sig, err = envelope.Sign(key, "dev-00002", a.Raw); err != nil {
		t.Fatal(err)
	}
	return a
}
