package webview_test

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/vitalgate/vitalgate/internal/envelope/testvectors"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/verdict"
	"github.com/vitalgate/vitalgate/internal/webview"
	"github.com/vitalgate/vitalgate/internal/webview/webviewtest"
)

// TestBrowserCOSEVectors checks the page's COSE_Sign1 verification
// (static/verify.js, WebCrypto) against the protocol's test vectors, which
// the gateway's Go verifier is tested with: every message the gateway
// verifies, the page verifies and returns the same payload; every message
// with a bad signature, the page refuses. (Messages the gateway refuses as
// malformed before any signature check are not judged here: the page's
// decoder is lenient where the signature still covers every byte.)
func TestBrowserCOSEVectors(t *testing.T) {
	browser := webviewtest.Browser(t)
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	tc, err := pki.ServerTLS(filepath.Join(dir, pki.FileBroker), filepath.Join(dir, pki.FileBrokerKey), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(filepath.Join(dir, pki.FileCA))
	if err != nil {
		t.Fatal(err)
	}
	s, err := webview.New(webview.Options{Addr: "127.0.0.1:0", TLS: tc, WSPort: 1, CA: ca, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tab, cancel := chromedp.NewContext(browser)
	defer cancel()
	if err := chromedp.Do(tab, chromedp.Navigate("https://"+s.Addr()+"/"), chromedp.WaitVisible(chromedp.ID("token"))); err != nil {
		t.Fatal(err)
	}
	judged, lenient := 0, 0
	for _, c := range testvectors.Cases() {
		got := verifyInPage(t, tab, c)
		envelopeOK := c.Stage == testvectors.StageRecord || c.Verdict == verdict.Accepted
		switch {
		case envelopeOK:
			judged++
			if want := "ok " + hex.EncodeToString(c.Payload); got != want {
				t.Errorf("%s (%s): page says %q, want %q", c.Name, c.Verdict, clipTo(got, 80), clipTo(want, 80))
			}
		case c.Verdict == verdict.BadSignature:
			judged++
			if !strings.HasPrefix(got, "err ") {
				t.Errorf("%s (bad_signature): the page verified it", c.Name)
			}
		case strings.HasPrefix(got, "ok "):
			lenient++
		}
	}
	if judged < 10 {
		t.Errorf("only %d vectors judged", judged)
	}
	t.Logf("%d vectors judged; %d malformed envelopes the gateway refuses still verify in the page", judged, lenient)
}

// verifyInPage runs Verify.sign1 on c's message with c's key in the page:
// "ok PAYLOAD-HEX" or "err REASON".
func verifyInPage(t *testing.T, tab context.Context, c testvectors.Case) string {
	t.Helper()
	spki, err := x509.MarshalPKIXPublicKey(testvectors.PublicKey(c.Key))
	if err != nil {
		t.Fatal(err)
	}
	alg, params := -7, `{name: "ECDSA", namedCurve: "P-256"}`
	if strings.Contains(c.Key, "ed25519") {
		alg, params = -8, `{name: "Ed25519"}`
	}
	js := fmt.Sprintf(`(async () => {
		const hex = (h) => new Uint8Array((h.match(/../g) || []).map((x) => parseInt(x, 16)));
		const key = await crypto.subtle.importKey("spki", hex(%q), %s, false, ["verify"]);
		try {
			const p = await Verify.sign1(hex(%q), %q, { key, alg: %d });
			return "ok " + Array.from(p, (b) => b.toString(16).padStart(2, "0")).join("");
		} catch (e) {
			return "err " + e.message;
		}
	})()`, hex.EncodeToString(spki), params, hex.EncodeToString(c.Msg), testvectors.DeviceID, alg)
	got, err := chromedp.Run(tab, chromedp.Evaluate[string](js, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("%s: %v", c.Name, err)
	}
	return got
}

func clipTo(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
