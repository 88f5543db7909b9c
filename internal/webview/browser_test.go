package webview_test

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/wire"
)

const (
	spo2  = "MDC_PULS_OXIM_SAT_O2"
	pulse = "MDC_PULS_OXIM_PULS_RATE"
	sys   = "MDC_PRESS_BLD_NONINV_SYS"
	dia   = "MDC_PRESS_BLD_NONINV_DIA"
	mean  = "MDC_PRESS_BLD_NONINV_MEAN"
)

func oximetry(s, p float64) []telemetry.Observation {
	return []telemetry.Observation{obs(spo2, "%", s), obs(pulse, "/min", p)}
}

// TestBrowser drives the web view in a headless Chromium against a real
// broker, with records signed by real device keys and published by real
// gateway identities.
func TestBrowser(t *testing.T) {
	e := newEnv(t)
	e.publish("site1", "gateways/site1/gw1/status", true, []byte("online"))
	e.publishChain("site1", "oxi-00001")
	e.publishChain("site1", "bp-00001")
	e.publishChain("site1", "ecg-00001")

	t.Run("live values, alerts and verified signatures", func(t *testing.T) { testLive(t, e) })
	t.Run("forged signatures are not verified", func(t *testing.T) { testForged(t, e) })
	t.Run("a forged record neither hides nor outranks real ones", func(t *testing.T) { testForgedCannotHide(t, e) })
	t.Run("markup in fields is shown as text", func(t *testing.T) { testEscaped(t, e) })
	t.Run("a token for another site sees nothing of this one", func(t *testing.T) { testOtherSite(t, e) })
	t.Run("security events for operators only", func(t *testing.T) { testSecurityRole(t, e) })
	t.Run("an expired token goes back to sign-in", func(t *testing.T) { testExpired(t, e) })
	t.Run("a refused token goes back to sign-in", func(t *testing.T) { testRefused(t, e) })
	t.Run("keyboard and phone", func(t *testing.T) { testKeyboardPhone(t, e) })
	t.Run("a revoked token goes back to sign-in", func(t *testing.T) { testRevoked(t, e) })
}

func testLive(t *testing.T, e *env) {
	tb := e.tab(t)
	tb.signIn(t, e.token(pki.RoleOperator, time.Hour, "site1"))
	tb.waitJS(t, "dashboard shown", `!document.getElementById("dash").hidden && document.getElementById("status").textContent === "Connected."`)
	if got := tb.text(t, `sessionStorage.getItem("vitalgate-token") ? "kept" : "none"`); got != "kept" {
		t.Errorf("token in sessionStorage: %s", got)
	}
	if got := tb.text(t, `localStorage.length + " " + document.cookie`); got != "0 " {
		t.Errorf("token must live in sessionStorage only; localStorage and cookies: %q", got)
	}
	tb.waitJS(t, "gateway online", `document.querySelector("li.gw")?.dataset.state === "online"`)

	e.sendRecord(record{site: "site1", dev: "oxi-00001", kind: "spo2", seq: 1, obs: oximetry(88, 72)})
	tb.waitJS(t, "SpO2 88 shown", cell("oxi-00001", spo2)+`?.textContent.startsWith("88")`)
	tb.waitJS(t, "ES256 signature verified", sigOf("oxi-00001", "spo2")+` === "verified"`)
	if a := tb.text(t, cell("oxi-00001", spo2)+`.dataset.alert || ""`); a != "low" {
		t.Errorf("SpO2 88 %% alert = %q, want low (default threshold 92)", a)
	}
	if a := tb.text(t, cell("oxi-00001", pulse)+`.dataset.alert || ""`); a != "" {
		t.Errorf("pulse 72 alert = %q, want none", a)
	}

	e.sendRecord(record{site: "site1", dev: "bp-00001", kind: "bp", seq: 7,
		obs: []telemetry.Observation{obs(sys, "mm[Hg]", 172), obs(dia, "mm[Hg]", 95), obs(mean, "mm[Hg]", 121)}})
	tb.waitJS(t, "systolic 172 shown", cell("bp-00001", sys)+`?.textContent.startsWith("172")`)
	tb.waitJS(t, "Ed25519 signature verified", sigOf("bp-00001", "bp")+` === "verified"`)
	if a := tb.text(t, cell("bp-00001", sys)+`.dataset.alert || ""`); a != "high" {
		t.Errorf("systolic 172 alert = %q, want high", a)
	}

	// A device whose chain has not arrived: shown, never as verified; once
	// the chain comes, the record is checked.
	e.sendRecord(record{site: "site1", dev: "oxi-00002", kind: "spo2", seq: 1, obs: oximetry(97, 64)})
	tb.waitJS(t, "no certificate yet", sigOf("oxi-00002", "spo2")+` === "nocert"`)
	e.publishChain("site1", "oxi-00002")
	tb.waitJS(t, "verified once the chain arrived", sigOf("oxi-00002", "spo2")+` === "verified"`)

	// A gateway with format json: the same checks.
	e.sendRecord(record{site: "site1", dev: "oxi-00002", kind: "temp", seq: 2, format: wire.JSON,
		obs: []telemetry.Observation{obs("MDC_TEMP_BODY", "Cel", 38.6)}})
	tb.waitJS(t, "JSON record verified", sigOf("oxi-00002", "temp")+` === "verified"`)
	if a := tb.text(t, cell("oxi-00002", "MDC_TEMP_BODY")+`.dataset.alert || ""`); a != "high" {
		t.Errorf("temperature 38.6 alert = %q, want high", a)
	}

	for i := range 8 {
		e.sendRecord(record{site: "site1", dev: "oxi-00001", kind: "spo2", seq: uint64(2 + i), ago: time.Duration(8-i) * time.Minute,
			obs: oximetry(float64(90+i%4), float64(70+3*i))})
	}
	tb.waitJS(t, "trend chart drawn", `document.querySelector("article.device[data-dev='oxi-00001'] .chart canvas") !== null`)
	e.publish("site1", "gateways/site1/gw1/status", true, []byte("offline"))
	tb.waitJS(t, "gateway offline", `document.querySelector("li.gw")?.dataset.state === "offline"`)
	e.publish("site1", "gateways/site1/gw1/status", true, []byte("online"))
	tb.waitJS(t, "gateway online again", `document.querySelector("li.gw")?.dataset.state === "online"`)
	ev := `{"v":1,"ts":` + strconv.FormatInt(time.Now().UnixMilli(), 10) + `,"gw":"gw1","dev":"oxi-00009","verdict":"bad_signature","detail":"signature does not verify","remote":"192.0.2.7:41352"}`
	e.publish("site1", "security/site1/gw1", false, []byte(ev))
	tb.waitJS(t, "security event shown", `document.querySelector("#events li .verdict")?.textContent === "bad_signature"`)

	samples := make([]float64, 500)
	for i := range samples {
		samples[i] = ecgSample(i)
	}
	period := uint64(4)
	e.sendRecord(record{site: "site1", dev: "ecg-00001", kind: "ecg", seq: 3, obs: []telemetry.Observation{
		{Code: "MDC_ECG_ELEC_POTL_II", Unit: "mV", Val: telemetry.Waveform(samples), PeriodMS: &period}}})
	tb.waitJS(t, "ECG strip drawn", `document.querySelector("article.device[data-dev='ecg-00001'] .wave canvas") !== null`)
	tb.waitJS(t, "ECG signature verified", sigOf("ecg-00001", "ecg")+` === "verified"`)
	if os.Getenv("VITALGATE_SCREENSHOT") == "1" {
		screenshot(t, tb)
	}
}

// ecgSample is a rough lead II trace at 250 Hz: a QRS spike a second.
func ecgSample(i int) float64 {
	switch p := i % 250; {
	case p == 100:
		return -0.1
	case p == 103:
		return 1.2
	case p == 106:
		return -0.3
	case p >= 160 && p < 190:
		return 0.25
	}
	return 0
}

// screenshot writes the page as the browser shows it to docs/webview.png.
func screenshot(t *testing.T, tb *tab) {
	png, err := chromedp.Run(tb.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join("..", "..", "docs", "webview.png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

func testForged(t *testing.T, e *env) {
	tb := e.tab(t)
	tb.signIn(t, e.token(pki.RoleClinician, time.Hour, "site1"))
	tb.waitJS(t, "connected", `document.getElementById("status").textContent === "Connected."`)

	// The record in the message differs from the signed one (a value
	// changed on the way): the signature verifies, the comparison fails.
	e.sendRecord(record{site: "site1", dev: "oxi-00001", kind: "spo2", seq: 100, obs: oximetry(95, 70),
		forge: func(a *wire.Accepted) {
			changed := *a.Rec
			changed.Obs = oximetry(99, 70)
			raw, err := telemetry.Encode(&changed)
			if err != nil {
				t.Fatal(err)
			}
			a.Rec, a.Raw = &changed, raw
		}})
	tb.waitJS(t, "changed record shown", cell("oxi-00001", spo2)+`?.textContent.startsWith("99")`)
	tb.waitJS(t, "changed record not verified", sigOf("oxi-00001", "spo2")+` === "unverified"`)
	if d := tb.text(t, `document.querySelector("article.device[data-dev='oxi-00001'] .sig").textContent`); !strings.Contains(d, "differs") {
		t.Errorf("detail %q does not say the record differs", d)
	}

	// A signature with a flipped bit.
	e.sendRecord(record{site: "site1", dev: "oxi-00001", kind: "spo2", seq: 101, obs: oximetry(94, 71),
		forge: func(a *wire.Accepted) { a.Sig[len(a.Sig)-1] ^= 1 }})
	tb.waitJS(t, "record 101 shown", cell("oxi-00001", spo2)+`?.textContent.startsWith("94")`)
	tb.waitJS(t, "bad signature not verified", sigOf("oxi-00001", "spo2")+` === "unverified"`)

	// Signed by another device's key.
	e.sendRecord(record{site: "site1", dev: "oxi-00001", kind: "spo2", seq: 102, obs: oximetry(96, 72),
		forge: func(a *wire.Accepted) {
			_, keyFile := pki.DevicePaths(e.dir, "oxi-00002")
			key, err := pki.LoadKey(keyFile)
			if err != nil {
				t.Fatal(err)
			}
			a.Sig = e.sign(key, "site1", a.Rec).Sig
		}})
	tb.waitJS(t, "record 102 shown", cell("oxi-00001", spo2)+`?.textContent.startsWith("96")`)
	tb.waitJS(t, "another device's signature not verified", sigOf("oxi-00001", "spo2")+` === "unverified"`)

	// A published chain that is another device's certificate.
	crt, _ := pki.DevicePaths(e.dir, "oxi-00001")
	other, err := os.ReadFile(crt)
	if err != nil {
		t.Fatal(err)
	}
	e.publish("site1", "certs/site1/bad-00001", true, other)
	e.sendRecord(record{site: "site1", dev: "bad-00001", kind: "spo2", seq: 1, obs: oximetry(97, 60)})
	tb.waitJS(t, "wrong certificate not verified", sigOf("bad-00001", "spo2")+` === "unverified"`)
	if d := tb.text(t, `document.querySelector("article.device[data-dev='bad-00001'] .sig").textContent`); !strings.Contains(d, "not the device's") {
		t.Errorf("detail %q does not say the certificate is another's", d)
	}

	// Garbage: the page says so and goes on.
	e.publish("site1", "telemetry/site1/junk-00001/spo2", false, []byte{0xa1, 0x61, 0x76, 0xff, 0x00})
	e.publish("site1", "certs/site1/junk-00001", true, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	tb.waitJS(t, "garbage reported", `document.getElementById("status").textContent.includes("telemetry/site1/junk-00001/spo2 could not be read")`)
	e.sendRecord(record{site: "site1", dev: "oxi-00001", kind: "spo2", seq: 103, obs: oximetry(92, 73)})
	tb.waitJS(t, "still live after garbage", cell("oxi-00001", spo2)+`?.textContent.startsWith("92")`)
}

// What any relay on the way can write (a record with a bad signature)
// must not stop the device's real records from being shown: not by
// claiming a huge seq, nor by claiming the id of the next real record
// first, so that the real one looks like a redelivery.
func testForgedCannotHide(t *testing.T, e *env) {
	tb := e.tab(t)
	tb.signIn(t, e.token(pki.RoleClinician, time.Hour, "site1"))
	tb.waitJS(t, "connected", `document.getElementById("status").textContent === "Connected."`)
	flip := func(a *wire.Accepted) { a.Sig[len(a.Sig)-1] ^= 1 }

	e.sendRecord(record{site: "site1", dev: "oxi-00001", kind: "spo2", seq: 1 << 40, obs: oximetry(50, 30), forge: flip})
	tb.waitJS(t, "forged record shown as not verified", cell("oxi-00001", spo2)+`?.textContent.startsWith("50") && `+
		sigOf("oxi-00001", "spo2")+` === "unverified"`)
	e.sendRecord(record{site: "site1", dev: "oxi-00001", kind: "spo2", seq: 400, obs: oximetry(93, 70)})
	tb.waitJS(t, "the real record after a forged huge seq shown and verified", cell("oxi-00001", spo2)+`?.textContent.startsWith("93") && `+
		sigOf("oxi-00001", "spo2")+` === "verified"`)

	e.sendRecord(record{site: "site1", dev: "oxi-00001", kind: "spo2", seq: 401, obs: oximetry(51, 31), forge: flip})
	tb.waitJS(t, "forged record 401 shown as not verified", cell("oxi-00001", spo2)+`?.textContent.startsWith("51") && `+
		sigOf("oxi-00001", "spo2")+` === "unverified"`)
	e.sendRecord(record{site: "site1", dev: "oxi-00001", kind: "spo2", seq: 401, obs: oximetry(95, 70)})
	tb.waitJS(t, "the real record 401 shown and verified", cell("oxi-00001", spo2)+`?.textContent.startsWith("95") && `+
		sigOf("oxi-00001", "spo2")+` === "verified"`)

	// Garbage, and another device's certificate, published as the
	// device's chain: its good chain stays in use.
	defer e.publishChain("site1", "oxi-00001") // the good chain back for the tests after this one
	crt, _ := pki.DevicePaths(e.dir, "oxi-00002")
	other, err := os.ReadFile(crt)
	if err != nil {
		t.Fatal(err)
	}
	for i, chain := range [][]byte{[]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), other} {
		e.publish("site1", "certs/site1/oxi-00001", true, chain)
		seq := uint64(402 + i)
		e.sendRecord(record{site: "site1", dev: "oxi-00001", kind: "spo2", seq: seq, obs: oximetry(float64(96+i), 70)})
		tb.waitJS(t, "record "+strconv.FormatUint(seq, 10)+" verified with the good chain after a bad one",
			cell("oxi-00001", spo2)+`?.textContent.startsWith("`+strconv.Itoa(96+i)+`") && `+sigOf("oxi-00001", "spo2")+` === "verified"`)
	}
}

func testEscaped(t *testing.T, e *env) {
	tb := e.tab(t)
	tb.signIn(t, e.token(pki.RoleOperator, time.Hour, "site1"))
	tb.waitJS(t, "connected", `document.getElementById("status").textContent === "Connected."`)
	const code = `<script>window.pwned=1</script>`
	const unit = `<img src=x onerror="window.pwned=2">`
	e.sendRecord(record{site: "site1", dev: "oxi-00001", kind: "spo2", seq: 200,
		obs: []telemetry.Observation{obs(spo2, "%", 97), obs(pulse, "/min", 66), obs(code, unit, 1)}})
	ev := `{"v":1,"ts":1764806400000,"gw":"<i>gw1</i>","dev":"<u onmouseover=\"window.pwned=4\">oxi</u>","verdict":"<b>bad_signature</b>","detail":"<img src=x onerror=\"window.pwned=3\">","remote":"192.0.2.7:1"}`
	e.publish("site1", "security/site1/gw1", false, []byte(ev))
	tb.waitJS(t, "field with markup shown", cell("oxi-00001", code)+` !== undefined && `+cell("oxi-00001", code)+` !== null`)
	tb.waitJS(t, "event shown", `document.querySelector("#events li") !== null`)
	if got := tb.text(t, cell("oxi-00001", code)+`.previousElementSibling.textContent`); got != code {
		t.Errorf("code shown as %q, want the text %q", got, code)
	}
	if got := tb.text(t, cell("oxi-00001", code)+`.textContent`); !strings.Contains(got, unit) {
		t.Errorf("unit shown as %q, want the text %q", got, unit)
	}
	if got := tb.text(t, `document.querySelector("#events li").textContent`); !strings.Contains(got, "<b>bad_signature</b>") || !strings.Contains(got, "onerror") ||
		!strings.Contains(got, "<i>gw1</i>") || !strings.Contains(got, "<u onmouseover") {
		t.Errorf("event shown as %q, want its markup as text", got)
	}
	if got := tb.text(t, `String(window.pwned) + " " + document.querySelectorAll("main script, main img, main b, main i, main u").length`); got != "undefined 0" {
		t.Errorf("markup in a field ran or became elements: %s", got)
	}
}

func testOtherSite(t *testing.T, e *env) {
	tb := e.tab(t)
	tb.signIn(t, e.token(pki.RoleOperator, time.Hour, "site2"))
	tb.waitJS(t, "connected", `document.getElementById("status").textContent === "Connected."`)
	e.sendRecord(record{site: "site1", dev: "oxi-00001", kind: "spo2", seq: 300, obs: oximetry(91, 80)})
	e.sendRecord(record{site: "site2", dev: "oxi-00001", kind: "spo2", seq: 1, obs: oximetry(98, 61)})
	// site2's record comes after site1's (published, and acknowledged, first).
	tb.waitJS(t, "site2's record shown", `document.querySelector("article.device[data-site='site2']") !== null`)
	if n := tb.text(t, `String(document.querySelectorAll("article.device[data-site='site1'], li.gw").length)`); n != "0" {
		t.Errorf("a token for site2 sees %s elements of site1", n)
	}
	if got := tb.text(t, sigOf("oxi-00001", "spo2")); got != "nocert" {
		t.Errorf("site2's record without a chain on site2: %q, want nocert", got)
	}

	// Asking for site1 by name with site2's token: the broker refuses.
	tb2 := e.tab(t)
	err := chromedp.Do(tb2.ctx, chromedp.SetValue(chromedp.ID("token"), e.token(pki.RoleOperator, time.Hour, "site2")),
		chromedp.SetValue(chromedp.ID("sites"), "site1"), chromedp.Click(chromedp.CSS(`#signin-form button[type=submit]`)))
	if err != nil {
		t.Fatal(err)
	}
	tb2.waitJS(t, "site1 refused", `document.getElementById("status").textContent.includes("Not authorized for certs/site1/#, telemetry/site1/#")`)
	e.sendRecord(record{site: "site1", dev: "oxi-00001", kind: "spo2", seq: 301, obs: oximetry(90, 81)})
	e.publish("site1", "gateways/site1/gw1/status", true, []byte("online"))
	if n := tb2.text(t, `String(document.querySelectorAll("article.device, li.gw").length)`); n != "0" {
		t.Errorf("a token for site2 asking for site1 sees %s elements of it", n)
	}
}

func testSecurityRole(t *testing.T, e *env) {
	tb := e.tab(t)
	tok := e.token(pki.RoleClinician, time.Hour, "site1")
	tb.signIn(t, tok)
	tb.waitJS(t, "connected", `document.getElementById("status").textContent === "Connected."`)
	if !securityRefused(t, e, tok) {
		t.Fatal("the broker let a clinician's token read security/site1/#: security events are for operators")
	}
	tb.waitJS(t, "operators only", `document.getElementById("sec-note").textContent === "Security events: operators only."`)
}

// securityRefused asks the broker, as an app, whether the token may read
// security/site1/#.
func securityRefused(t *testing.T, e *env, tok string) bool {
	tc, err := pki.ClientTLS(filepath.Join(e.dir, pki.FileCA), "", "")
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.NewClientOptions().AddBroker("wss://" + e.b.WSAddr() + "/").SetClientID("probe").
		SetTLSConfig(tc).SetUsername("app").SetPassword(tok).SetAutoReconnect(false))
	if tk := c.Connect(); !tk.WaitTimeout(waitFor) || tk.Error() != nil {
		t.Fatalf("probe connect: %v", tk.Error())
	}
	defer c.Disconnect(100)
	tk := c.Subscribe("security/site1/#", 1, nil)
	if !tk.WaitTimeout(waitFor) {
		t.Fatal("probe subscribe timed out")
	}
	return tk.Error() != nil || tk.(*paho.SubscribeToken).Result()["security/site1/#"] >= 0x80
}

func testExpired(t *testing.T, e *env) {
	tb := e.tab(t)
	tb.signIn(t, e.token(pki.RoleClinician, 3*time.Second, "site1"))
	tb.waitJS(t, "connected", `document.getElementById("status").textContent === "Connected."`)
	tb.waitJS(t, "back at sign-in", `!document.getElementById("signin").hidden && document.getElementById("dash").hidden`)
	if msg := tb.text(t, `document.getElementById("signin-msg").textContent`); !strings.Contains(msg, "expired") {
		t.Errorf("sign-in message %q does not say the token expired", msg)
	}
	if got := tb.text(t, `sessionStorage.getItem("vitalgate-token") || "none"`); got != "none" {
		t.Error("expired token still in sessionStorage")
	}
	// Pasting the expired token again is refused at once.
	tb.signIn(t, e.tokenExpired())
	tb.waitJS(t, "refused", `document.getElementById("signin-msg").textContent.includes("expired") && document.getElementById("dash").hidden`)
}

// tokenExpired is a token whose exp has passed.
func (e *env) tokenExpired() string {
	tok := e.token(pki.RoleClinician, time.Second, "site1")
	time.Sleep(1100 * time.Millisecond)
	return tok
}

func testRefused(t *testing.T, e *env) {
	// Signed by another deployment's key: well-formed, not expired, refused
	// by the broker with CONNACK "not authorized".
	other := t.TempDir()
	if err := pki.Init(other, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	tok, err := pki.MintToken(other, "mallory", []string{"site1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tb := e.tab(t)
	tb.signIn(t, tok)
	tb.waitJS(t, "back at sign-in", `!document.getElementById("signin").hidden && document.getElementById("signin-msg").textContent.includes("not authorized")`)
	if n := tb.text(t, `String(document.querySelectorAll("article.device").length)`); n != "0" {
		t.Errorf("%s devices shown to a refused token", n)
	}
}

// testKeyboardPhone signs in with the keyboard alone on a phone-sized
// screen: the page fits its width, the cards take the focus in turn, and
// Sign out is reached and pressed with the keyboard.
func testKeyboardPhone(t *testing.T, e *env) {
	tb := e.tab(t)
	err := chromedp.Do(tb.ctx, chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile),
		chromedp.SetValue(chromedp.ID("token"), e.token(pki.RoleClinician, time.Hour, "site1")),
		chromedp.Focus(chromedp.ID("token")), chromedp.KeyEvent(kb.Tab), chromedp.KeyEvent(kb.Enter))
	if err != nil {
		t.Fatal(err)
	}
	tb.waitJS(t, "signed in with the keyboard", `document.getElementById("status").textContent === "Connected."`)
	e.sendRecord(record{site: "site1", dev: "oxi-00001", kind: "spo2", seq: 400, obs: oximetry(96, 70)})
	tb.waitJS(t, "record shown", cell("oxi-00001", spo2)+`?.textContent.startsWith("96")`)
	if got := tb.text(t, `String(document.documentElement.scrollWidth) + " " + window.innerWidth`); got != "390 390" {
		t.Errorf("page width on a phone (scroll width, viewport): %s", got)
	}
	// Tab order: Sign out, then the device cards.
	if err := chromedp.Do(tb.ctx, chromedp.Focus(chromedp.ID("signout")), chromedp.KeyEvent(kb.Tab)); err != nil {
		t.Fatal(err)
	}
	if got := tb.text(t, `document.activeElement.tagName + " " + (document.activeElement.dataset.dev || "")`); !strings.HasPrefix(got, "ARTICLE ") {
		t.Errorf("Tab after Sign out focuses %q, want a device card", got)
	}
	if err := chromedp.Do(tb.ctx, chromedp.Focus(chromedp.ID("signout")), chromedp.KeyEvent(kb.Enter)); err != nil {
		t.Fatal(err)
	}
	tb.waitJS(t, "signed out with the keyboard", `!document.getElementById("signin").hidden && document.activeElement.id === "token"`)
}

// testRevoked: the broker ends the session of a token revoked while it is
// signed in (DISCONNECT "not authorized"), and the page returns to sign-in.
func testRevoked(t *testing.T, e *env) {
	tok := e.token(pki.RoleClinician, time.Hour, "site1")
	var claims struct {
		ID string `json:"jti"`
	}
	parts := strings.Split(tok, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || json.Unmarshal(payload, &claims) != nil || claims.ID == "" {
		t.Fatalf("token claims: %v", err)
	}
	tb := e.tab(t)
	tb.signIn(t, tok)
	tb.waitJS(t, "connected", `document.getElementById("status").textContent === "Connected."`)
	if err := pki.RevokeToken(e.dir, claims.ID); err != nil {
		t.Fatal(err)
	}
	tb.waitJS(t, "back at sign-in", `!document.getElementById("signin").hidden && document.getElementById("signin-msg").textContent.includes("revoked")`)
}
