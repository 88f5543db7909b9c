package webview

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// start serves the web view on a loopback port with a fresh PKI's broker
// certificate, and returns it with a client that trusts ca.crt.
func start(t *testing.T, alerts Alerts) (*Server, *http.Client) {
	t.Helper()
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
	s, err := New(Options{Addr: "127.0.0.1:0", TLS: tc, WSPort: 8885, CA: ca, Alerts: alerts, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	ctc, err := pki.ClientTLS(filepath.Join(dir, pki.FileCA), "", "")
	if err != nil {
		t.Fatal(err)
	}
	return s, &http.Client{Transport: &http.Transport{TLSClientConfig: ctc}}
}

func get(t *testing.T, c *http.Client, method, url string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func TestServesPageWithStrictHeaders(t *testing.T) {
	s, c := start(t, nil)
	base := "https://" + s.Addr()
	for _, tc := range []struct {
		path, ctype string
		status      int
	}{
		{"/", "text/html", 200},
		{"/app.js", "text/javascript", 200},
		{"/vendor/mqtt.min.js", "text/javascript", 200},
		{"/vendor/uPlot.min.css", "text/css", 200},
		{"/config.json", "application/json", 200},
		{"/vendor/", "", 404},
		{"/../webview.go", "", 404},
		{"/nothing", "", 404},
	} {
		resp, body := get(t, c, "GET", base+tc.path)
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d", tc.path, resp.StatusCode, tc.status)
			continue
		}
		if tc.ctype != "" && !strings.HasPrefix(resp.Header.Get("Content-Type"), tc.ctype) {
			t.Errorf("%s: Content-Type %q, want %s", tc.path, resp.Header.Get("Content-Type"), tc.ctype)
		}
		csp := resp.Header.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "script-src 'self';", "frame-ancestors 'none'", "connect-src 'self' wss://127.0.0.1:8885;"} {
			if !strings.Contains(csp, want) {
				t.Errorf("%s: CSP %q lacks %q", tc.path, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe") {
			t.Errorf("%s: CSP %q allows unsafe sources", tc.path, csp)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("Referrer-Policy") != "no-referrer" {
			t.Errorf("%s: headers %v", tc.path, resp.Header)
		}
		if tc.path == "/" && (!strings.Contains(body, `<script src="/app.js" defer></script>`) || strings.Contains(body, "<script>")) {
			t.Errorf("index.html: want external scripts only")
		}
	}
	resp, _ := get(t, c, "POST", base+"/")
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: status %d, want 405", resp.StatusCode)
	}
}

// connect-src names the host the page was loaded by, not every host on the
// WebSocket port: a script that got into the page could otherwise send the
// token anywhere that listens on that port. A Host that a CSP source
// cannot hold as it is gets the port on any host, never its text.
func TestCSPNamesTheHost(t *testing.T) {
	s, _ := start(t, nil)
	for host, want := range map[string]string{
		"vitals.clinic.example:8444": "connect-src 'self' wss://vitals.clinic.example:8885;",
		"vitals.clinic.example":      "connect-src 'self' wss://vitals.clinic.example:8885;",
		"10.0.0.7:8444":              "connect-src 'self' wss://10.0.0.7:8885;",
		"[::1]:8444":                 "connect-src 'self' wss://*:8885;",
		"a;script-src:*":             "connect-src 'self' wss://*:8885;",
		"":                           "connect-src 'self' wss://*:8885;",
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.Host = host
		w := httptest.NewRecorder()
		s.Handler().ServeHTTP(w, r)
		csp := w.Header().Get("Content-Security-Policy")
		if !strings.Contains(csp, want) || strings.Count(csp, "script-src") != 1 {
			t.Errorf("Host %q: CSP %q, want %q", host, csp, want)
		}
	}
}

func TestConfigJSON(t *testing.T) {
	low := 88.0
	s, c := start(t, Alerts{"spo2": {Low: &low}, "pulse": {}})
	_, body := get(t, c, "GET", "https://"+s.Addr()+"/config.json")
	var cfg struct {
		WSPort       int    `json:"ws_port"`
		CA           string `json:"ca"`
		Measurements []struct {
			Name  string   `json:"name"`
			Codes []string `json:"codes"`
			Low   *float64 `json:"low"`
			High  *float64 `json:"high"`
		} `json:"measurements"`
	}
	if err := json.Unmarshal([]byte(body), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.WSPort != 8885 || !strings.HasPrefix(cfg.CA, "-----BEGIN CERTIFICATE-----") {
		t.Errorf("ws_port %d, ca %.30q", cfg.WSPort, cfg.CA)
	}
	got := map[string]string{}
	for _, m := range cfg.Measurements {
		var s string
		if m.Low != nil {
			s += "low " + jsonNum(*m.Low)
		}
		if m.High != nil {
			s += " high " + jsonNum(*m.High)
		}
		got[m.Name] = strings.TrimSpace(s)
	}
	want := map[string]string{"spo2": "low 88", "pulse": "", "systolic": "low 90 high 160", "weight": ""}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q", k, got[k], v)
		}
	}
}

func jsonNum(f float64) string { b, _ := json.Marshal(f); return string(b) }

func TestRefusesOldTLS(t *testing.T) {
	s, _ := start(t, nil)
	conn, err := tls.Dial("tcp", s.Addr(), &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS11}) //nolint:gosec // the point of the test
	if err == nil {
		conn.Close()
		t.Fatal("a TLS 1.1 handshake succeeded")
	}
}

func TestAlertsValidate(t *testing.T) {
	one, two, nan := 1.0, 2.0, 0.0
	nan /= nan
	for _, tc := range []struct {
		a    Alerts
		want string
	}{
		{Alerts{"spo2": {Low: &one, High: &two}, "weight": {}}, ""},
		{Alerts{"spO2": {}}, "web_alerts.spO2: unknown measurement"},
		{Alerts{"pulse": {Low: &two, High: &one}}, "web_alerts.pulse: low 2 is not below high 1"},
		{Alerts{"temp": {Low: &two, High: &two}}, "not below"},
		{Alerts{"glucose": {High: &nan}}, "web_alerts.glucose.high: not a finite number"},
	} {
		err := tc.a.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%v: error %v, want %q", tc.a, err, tc.want)
		}
	}
}

func TestNewChecksOptions(t *testing.T) {
	tc := &tls.Config{}
	for _, o := range []Options{
		{TLS: tc, WSPort: 1, CA: []byte("x")},
		{Addr: ":0", WSPort: 1, CA: []byte("x")},
		{Addr: ":0", TLS: tc, CA: []byte("x")},
		{Addr: ":0", TLS: tc, WSPort: 1},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
}
