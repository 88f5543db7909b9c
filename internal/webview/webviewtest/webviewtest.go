// Package webviewtest starts a headless Chromium for tests of the web view.
// A test skips when no Chromium is installed, and fails instead when the
// environment variable VITALGATE_CI is 1 (CI installs it).
package webviewtest

import (
	"context"
	"os"
	"os/exec"
	"testing"

	"github.com/chromedp/chromedp"
)

// Chromium returns the browser's path, or skips the test (fails it with
// VITALGATE_CI=1).
func Chromium(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("VITALGATE_CI") == "1" {
		t.Fatal("chromium is not installed (VITALGATE_CI=1: .ci/run installs it)")
	}
	t.Skip("chromium is not installed: skipping the browser test (apt-get install chromium)")
	return ""
}

// Browser starts a headless Chromium (1280×900, certificate errors
// ignored: the page is served with the test PKI's broker certificate) that
// ends with the test, and returns its allocator context for
// chromedp.NewContext.
func Browser(t testing.TB) context.Context {
	t.Helper()
	exe := Chromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe),
		chromedp.IgnoreCertErrors, chromedp.WindowSize(1280, 900))
	ctx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	return ctx
}
