package cloud

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/fhirexport/fhirtest"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// A record whose Bundle is larger than the broker's max_packet (an ECG of
// small samples of many digits: each grows from 9 bytes of CBOR to some 25
// characters, and the signature comes again in base64) cannot be
// published on fhir/: the broker would refuse the PUBLISH and close the
// exporter's connection, and a retry for ever held up every record after
// it. It is posted to the server but not published, and counted; the
// records after it are exported.
func TestBrokerExporterSkipsBundleTooLargeToPublish(t *testing.T) {
	dir := testPKI(t)
	srv := fhirtest.Start(t, "s3cret")
	cfg := testConfig(dir, "")
	cfg.MaxPacket = 16 << 10
	cfg.FHIR = fhirConfig(t, srv)
	b, _ := startBroker(t, cfg)
	testutil.Eventually(t, waitFor, "the exporter subscribed", func() bool {
		return metric(t, b, "vitalgate_cloud_subscriptions") >= 2
	})
	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	samples := make([]float64, 800)
	for i := range samples {
		samples[i] = 1.234567890123e-7 + float64(i)*1e-19 // "0.0000001234567890123..." in FHIR
	}
	big := signedBy(t, key, 1, 95)
	big.Rec.Dev, big.Rec.Kind = "dev-00002", "ecg" // no certificate: exported unverified
	period := uint64(4)
	big.Rec.Obs = []telemetry.Observation{{Code: telemetry.CodeECG, Val: telemetry.Waveform(samples), Unit: "mV", PeriodMS: &period}}
	if big.Raw, err = telemetry.Encode(big.Rec); err != nil {
		t.Fatal(err)
	}
	if big.Sig, err = envelope.Sign(key, "dev-00002", big.Raw); err != nil {
		t.Fatal(err)
	}
	publishAccepted(t, gw, big)
	publishAccepted(t, gw, signedMessage(t, dir, 1, 97))

	testutil.Eventually(t, waitFor, "both records posted", func() bool {
		return srv.Count("Observation", obsIdent("dev-00001", 1, "150456")) == 1 &&
			srv.Count("Observation", obsIdent("dev-00002", 1, "131330")) == 1
	})
	if metric(t, b, "vitalgate_fhir_unpublished_total") != 1 {
		t.Errorf("unpublished count wrong:\n%s", scrape(t, b))
	}
}

// broker fhir's max_packet: 0 (no bound) or a packet size a broker may
// have; the exporter then publishes no Bundle larger than it less room
// for the header.
func TestStandaloneMaxPacket(t *testing.T) {
	dir := testPKI(t)
	cfg := DefaultFHIRStandalone()
	cfg.PKI, cfg.ClientID = dir, "fx-size"
	cfg.FHIR.Sites = []string{"site1"}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("max_packet 0: %v", err)
	}
	for _, n := range []int{100, 1 << 30} {
		cfg.MaxPacket = n
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "max_packet") {
			t.Errorf("max_packet %d: %v, want an error naming max_packet", n, err)
		}
	}
	cfg.MaxPacket = 1 << 20
	if _, err := NewFHIR(cfg, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
}
