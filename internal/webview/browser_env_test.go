package webview_test

import (
	"context"
	"crypto"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vitalgate/vitalgate/internal/cloud"
	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/webview/webviewtest"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// waitFor bounds every wait for the page: generous, since 2 cores run the
// broker, the browser and the race detector at once.
const waitFor = 20 * time.Second

// env is a real cloud broker with the web view, two gateways publishing to
// it (gw1 of site1, gw2 of site2) and a headless Chromium.
type env struct {
	t       *testing.T
	dir     string
	b       *cloud.Broker
	url     string
	gw      map[string]paho.Client // by site
	browser context.Context
}

func newEnv(t *testing.T) *env {
	t.Helper()
	browser := webviewtest.Browser(t)
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []struct {
		id  string
		alg pki.KeyAlg
	}{{"oxi-00001", pki.P256}, {"bp-00001", pki.Ed25519}, {"oxi-00002", pki.P256}, {"ecg-00001", pki.P256}, {"bad-00001", pki.P256}} {
		if err := pki.IssueDevice(dir, d.id, d.alg, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := pki.IssueGateway(dir, "gw2", "site2", pki.P256); err != nil {
		t.Fatal(err)
	}
	cfg := cloud.Default()
	cfg.PKI, cfg.Data, cfg.HTTP = dir, "", ""
	cfg.Listen, cfg.Apps, cfg.WS, cfg.Web = "127.0.0.1:0", "", "127.0.0.1:0", "127.0.0.1:0"
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	b, err := cloud.New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	e := &env{t: t, dir: dir, b: b, url: "https://" + b.WebAddr() + "/", gw: map[string]paho.Client{}}
	crt, key := filepath.Join(dir, pki.FileGatewayClient), filepath.Join(dir, pki.FileGatewayClientKey)
	e.gw["site1"] = e.gateway("gw1", crt, key)
	crt, key = pki.GatewayPaths(dir, "gw2")
	e.gw["site2"] = e.gateway("gw2", crt, key)

	e.browser = browser
	return e
}

// testWriter sends logs to t.Log with -v only.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	if testing.Verbose() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// gateway connects a gateway identity to the broker, as a gateway's relay does.
func (e *env) gateway(id, crt, key string) paho.Client {
	e.t.Helper()
	tc, err := pki.ClientTLS(filepath.Join(e.dir, pki.FileCA), crt, key)
	if err != nil {
		e.t.Fatal(err)
	}
	opts := paho.NewClientOptions().AddBroker("ssl://" + e.b.GatewayAddr()).SetClientID(id).
		SetTLSConfig(tc).SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		e.t.Fatalf("gateway %s: connect: %v", id, tok.Error())
	}
	e.t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// publish sends a QoS 1 message as the site's gateway and waits for PUBACK.
func (e *env) publish(site, topic string, retained bool, payload []byte) {
	e.t.Helper()
	tok := e.gw[site].Publish(topic, 1, retained, payload)
	if !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		e.t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// publishChain publishes dev's certificate chain (device certificate, then
// device-ca.crt) on certs/{site}/{dev}, retained, as certpub does.
func (e *env) publishChain(site, dev string) {
	e.t.Helper()
	crt, _ := pki.DevicePaths(e.dir, dev)
	leaf, err := os.ReadFile(crt)
	if err != nil {
		e.t.Fatal(err)
	}
	ca, err := os.ReadFile(filepath.Join(e.dir, pki.FileDeviceCA))
	if err != nil {
		e.t.Fatal(err)
	}
	e.publish(site, "certs/"+site+"/"+dev, true, append(leaf, ca...))
}

// record is one record a device signs; forge, when set, changes the
// message after signing.
type record struct {
	site, dev, kind string
	seq             uint64
	ago             time.Duration // measured this long before now
	obs             []telemetry.Observation
	forge           func(a *wire.Accepted)
	format          wire.Format // "": CBOR
}

func obs(code, unit string, v float64) telemetry.Observation {
	return telemetry.Observation{Code: code, Unit: unit, Val: telemetry.Scalar(v)}
}

// sendRecord signs r with the device's key and publishes its cloud message
// as the site's gateway.
func (e *env) sendRecord(r record) {
	e.t.Helper()
	_, keyFile := pki.DevicePaths(e.dir, r.dev)
	key, err := pki.LoadKey(keyFile)
	if err != nil {
		e.t.Fatal(err)
	}
	rec := &telemetry.Record{V: 1, Dev: r.dev, Seq: r.seq, TS: time.Now().Add(-r.ago).UnixMilli(), Kind: r.kind, Obs: r.obs}
	a := e.sign(key, r.site, rec)
	if r.forge != nil {
		r.forge(a)
	}
	payload, err := wire.Encode(r.format, a)
	if err != nil {
		e.t.Fatal(err)
	}
	e.publish(r.site, wire.Topic(r.site, r.dev, r.kind), false, payload)
}

func (e *env) sign(key crypto.Signer, site string, rec *telemetry.Record) *wire.Accepted {
	e.t.Helper()
	raw, err := telemetry.Encode(rec)
	if err != nil {
		e.t.Fatal(err)
	}
	sig, err := envelope.Sign(key, rec.Dev, raw)
	if err != nil {
		e.t.Fatal(err)
	}
	gw := "gw1"
	if site == "site2" {
		gw = "gw2"
	}
	return &wire.Accepted{Site: site, GW: gw, RX: time.Now().UnixMilli(), Rec: rec, Raw: raw, Sig: sig}
}

// token mints an app token of the deployment's key.
func (e *env) token(role string, ttl time.Duration, sites ...string) string {
	e.t.Helper()
	tok, err := pki.MintRoleToken(e.dir, "nurse-"+role, role, sites, ttl)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// tab is one browser tab with its console collected.
type tab struct {
	ctx     context.Context
	e       *env
	mu      sync.Mutex
	console []string
}

func (e *env) tab(t *testing.T) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(e.browser)
	t.Cleanup(cancel)
	tb := &tab{ctx: ctx, e: e}
	msgs := chromedp.Console(ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			tb.mu.Lock()
			tb.console = append(tb.console, m.String())
			tb.mu.Unlock()
		}
	}()
	if err := chromedp.Do(ctx, chromedp.Navigate(e.url), chromedp.WaitVisible(chromedp.ID("token"))); err != nil {
		t.Fatalf("open %s: %v", e.url, err)
	}
	t.Cleanup(func() { tb.checkConsole(t) })
	return tb
}

// checkConsole fails on a Content-Security-Policy violation or an uncaught
// exception in the page.
func (tb *tab) checkConsole(t *testing.T) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	for _, m := range tb.console {
		if strings.Contains(m, "Content Security Policy") || strings.HasPrefix(m, string(chromedp.ConsoleException)) {
			t.Errorf("page console: %s", m)
		}
	}
}

func (tb *tab) signIn(t *testing.T, token string) {
	t.Helper()
	err := chromedp.Do(tb.ctx, chromedp.SetValue(chromedp.ID("token"), token),
		chromedp.Click(chromedp.CSS(`#signin-form button[type=submit]`)))
	if err != nil {
		t.Fatalf("sign in: %v", err)
	}
}

// waitJS polls a JavaScript predicate until it is true, or fails with what.
func (tb *tab) waitJS(t *testing.T, what, expr string) {
	t.Helper()
	_, err := chromedp.Run(tb.ctx, chromedp.Poll[bool](expr,
		chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(waitFor)))
	if err != nil {
		t.Fatalf("%s: %v (page: %q)", what, err, tb.text(t, "document.body.innerText"))
	}
}

// text evaluates a string expression.
func (tb *tab) text(t *testing.T, expr string) string {
	t.Helper()
	s, err := chromedp.Run(tb.ctx, chromedp.Evaluate[string](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return s
}

// cell is the JavaScript of the value element of a code on a device's card.
func cell(dev, code string) string {
	return fmt.Sprintf(`Array.from(document.querySelectorAll("article.device")).find(a => a.dataset.dev === %q)?.querySelector("dd[data-code='%s']")`, dev, code)
}

// sigOf is the JavaScript of the signature state of a device's kind.
func sigOf(dev, kind string) string {
	return fmt.Sprintf(`(Array.from(document.querySelectorAll("article.device")).find(a => a.dataset.dev === %q)?.querySelector("section.kind[data-kind='%s'] .sig")?.dataset.sig || "")`, dev, kind)
}
