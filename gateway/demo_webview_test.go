package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/vitalgate/vitalgate/internal/webview/webviewtest"
)

// webLine is the demo's header line naming the web view and its token.
var webLine = regexp.MustCompile(`web view (https://127\.0\.0\.1:\d+/)  \(trust \S+; token in (\S+)\)`)

// TestDemoWebView runs the demo and opens its web view in a headless
// Chromium with the token the demo wrote: the simulated patients' devices
// appear with their signatures verified in the browser, the gateway online
// and the attackers' rejections as security events.
func TestDemoWebView(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole system")
	}
	browser := webviewtest.Browser(t)
	dir := t.TempDir()
	out := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runDemo(ctx, []string{"--devices", "6", "--attackers", "1", "--duration", "120s", "--dir", dir}, out, false)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("demo: %v", err)
		}
	}()
	var m []string
	for deadline := time.Now().Add(60 * time.Second); m == nil && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		m = webLine.FindStringSubmatch(out.String())
	}
	if m == nil {
		t.Fatalf("the demo printed no web view line:\n%s", out.String())
	}
	if m[2] != filepath.Join(dir, "webview.token") {
		t.Errorf("token file %s, want DIR/webview.token", m[2])
	}
	tok, err := os.ReadFile(m[2])
	if err != nil {
		t.Fatal(err)
	}
	tab, cancelTab := chromedp.NewContext(browser)
	defer cancelTab()
	err = chromedp.Do(tab, chromedp.Navigate(m[1]),
		chromedp.SetValue(chromedp.ID("token"), strings.TrimSpace(string(tok))),
		chromedp.Click(chromedp.CSS(`#signin-form button[type=submit]`)))
	if err != nil {
		t.Fatalf("sign in: %v", err)
	}
	// Every kind of the patients' devices shown, signatures verified in the
	// browser, none refused; the gateway online; rejections as events.
	const ready = `(() => {
		const kinds = new Set(Array.from(document.querySelectorAll("section.kind")).map(k => k.dataset.kind));
		const sigs = Array.from(document.querySelectorAll(".sig")).map(s => s.dataset.sig);
		return kinds.size >= 6 && sigs.filter(s => s === "verified").length >= 6 &&
			document.querySelector("li.gw")?.dataset.state === "online" &&
			document.querySelectorAll("#events li").length > 0;
	})()`
	_, err = chromedp.Run(tab, chromedp.Poll[bool](ready,
		chromedp.WithPollingInterval(200*time.Millisecond), chromedp.WithPollingTimeout(90*time.Second)))
	if err != nil {
		body, _ := chromedp.Run(tab, chromedp.Evaluate[string](`document.body.innerText`))
		t.Fatalf("the demo's web view did not fill: %v\n%s", err, body)
	}
	bad, err := chromedp.Run(tab, chromedp.Evaluate[string](
		`Array.from(document.querySelectorAll(".sig[data-sig='unverified']")).map(s => s.closest("article").dataset.dev + ": " + s.textContent).join("\n")`))
	if err != nil || bad != "" {
		t.Errorf("records not verified in the browser (%v):\n%s", err, bad)
	}
}
