package cloud

import (
	"bytes"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/fhirexport/fhirtest"
	"github.com/vitalgate/vitalgate/internal/oidc/oidctest"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// goroutinesOf lists the goroutines whose stacks mention one of parts.
func goroutinesOf(parts ...string) []string {
	var buf bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&buf, 2)
	var out []string
	for _, g := range strings.Split(buf.String(), "\n\n") {
		for _, p := range parts {
			if strings.Contains(g, p) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

// A broker with everything of its own on (the FHIR exporter posting to a
// server, the web view, an outside identity provider) leaves no goroutine
// of them behind when it is closed: not the exporter, not the key set's
// refresh, not the idle keep-alive connections of their HTTP clients.
func TestBrokerCloseLeavesNoGoroutines(t *testing.T) {
	leaky := []string{"internal/fhirexport", "internal/oidc", "MicahParks", "internal/webview", "net/http.(*persistConn)"}
	testutil.Eventually(t, waitFor, "no goroutines of earlier tests", func() bool { return len(goroutinesOf(leaky...)) == 0 })
	dir := testPKI(t)
	srv := fhirtest.Start(t, "s3cret")
	p := oidctest.New(t)
	p.NewKey(t, "k1", "ES256")
	p.Rotate("k1")
	cfg := testConfig(dir, "")
	cfg.FHIR = fhirConfig(t, srv)
	cfg.OIDC = p.Config()
	cfg.Web = "127.0.0.1:0"
	b, _ := startBroker(t, cfg)
	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	testutil.Eventually(t, waitFor, "the exporter subscribed", func() bool {
		return metric(t, b, "vitalgate_cloud_subscriptions") >= 2
	})
	publishAccepted(t, gw, signedMessage(t, dir, 1, 97))
	testutil.Eventually(t, waitFor, "a record posted", func() bool {
		return srv.Count("Observation", obsIdent("dev-00001", 1, "150456")) == 1
	})
	gw.Disconnect(100)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(waitFor)
	for left := goroutinesOf(leaky...); len(left) > 0; left = goroutinesOf(leaky...) {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left after Close:\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
