package cloud

import (
	"context"
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"
	"time"

	packets5 "github.com/eclipse/paho.golang/packets"
	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/golang-jwt/jwt/v5"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// Filters of one site by who may read them (docs/apps.md#roles).
var (
	everyRoleReads = []string{"telemetry/site1/#", "fhir/site1/#", "gateways/site1/#", "certs/site1/#",
		"$share/g/fhir/site1/+"}
	operatorOnlyReads = []string{"security/site1/#", "jobs/site1/#", "inventory/site1/#",
		"security/site1/gw1", "$share/g/security/site1/#"}
)

// TestRoles: a clinician's token (role clinician, or no role) subscribes to
// the telemetry, FHIR, gateway status and certificates of its sites and is
// refused the security events, jobs and inventory with a reason-coded SUBACK
// (MQTT 5: 0x87 not authorized; 3.1.1: 0x80 failure), through real paho
// clients of both versions; an operator's token subscribes to all of them.
func TestRoles(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, ""))
	for _, tc := range []struct {
		name, role string
		operator   bool
	}{
		{"no role", "", false},
		{"clinician", pki.RoleClinician, false},
		{"operator", pki.RoleOperator, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sub := "app-" + tc.name
			tok := mintRole(t, dir, sub, tc.role, "site1")
			want := map[string]bool{}
			for _, f := range everyRoleReads {
				want[f] = true
			}
			for _, f := range operatorOnlyReads {
				want[f] = tc.operator
			}

			// MQTT 3.1.1 (paho.mqtt.golang): one SUBSCRIBE of every filter.
			c3 := pahoClient(t, "ssl://"+b.AppsAddr(), appTLS(t, dir), sub+"-v3", "app", tok, true)
			filters := map[string]byte{}
			for f := range want {
				filters[f] = 1
			}
			st := c3.SubscribeMultiple(filters, func(paho.Client, paho.Message) {})
			if !st.WaitTimeout(waitFor) {
				t.Fatal("3.1.1 subscribe: timed out")
			}
			for f, code := range st.(*paho.SubscribeToken).Result() {
				if ok := want[f]; ok && code != 1 || !ok && code != 0x80 {
					t.Errorf("3.1.1 subscribe %q: code %#x, want granted=%v (0x80 if refused)", f, code, ok)
				}
			}

			// MQTT 5 (paho.golang): the reason code is 0x87 not authorized.
			c5 := dialPaho5(t, b, dir, sub+"-v5", tok)
			for f, ok := range want {
				code := c5.subscribeCode(t, f)
				if ok && code != 1 || !ok && code != packets.ErrNotAuthorized.Code {
					t.Errorf("MQTT 5 subscribe %q: code %#x, want granted=%v (0x87 if refused)", f, code, ok)
				}
			}
		})
	}
	if s := scrape(t, b); !strings.Contains(s, `vitalgate_cloud_acl_denied_total{action="subscribe",kind="app"} 20`) {
		t.Errorf("subscribe denials not counted (2 clinicians x 5 filters x 2 clients):\n%s", grepLines(s, "acl_denied"))
	}
}

// TestRolesDeliveries: a security event a gateway publishes reaches the
// operator and not the clinician, and a persistent session an operator
// made keeps nothing of security/ when its client reconnects with a
// clinician's token (the subscription and the queued event are removed).
func TestRolesDeliveries(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, ""))
	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)

	ops := pahoClient(t, "ssl://"+b.AppsAddr(), appTLS(t, dir), "ops", "app", mintRole(t, dir, "ops", pki.RoleOperator, "site1"), true)
	opsIn := newInbox()
	wait(t, ops.Subscribe("security/site1/#", 1, opsIn.handler), "operator subscribe")
	nurse := pahoClient(t, "ssl://"+b.AppsAddr(), appTLS(t, dir), "nurse", "app", mintRole(t, dir, "nurse", "", "site1"), true)
	nurseIn := newInbox()
	wait(t, nurse.Subscribe("telemetry/site1/#", 1, nurseIn.handler), "clinician subscribe")
	_ = nurse.Subscribe("security/site1/#", 1, nurseIn.handler).WaitTimeout(waitFor) // refused

	wait(t, gw.Publish("security/site1/gw1", 1, false, `{"event":"x"}`), "gateway publish event")
	if m := opsIn.next(t); m.Topic() != "security/site1/gw1" {
		t.Fatalf("operator got %s", m.Topic())
	}
	wait(t, gw.Publish("telemetry/site1/dev-00001/spo2", 1, false, "probe"), "gateway publish probe")
	if m := nurseIn.next(t); m.Topic() != "telemetry/site1/dev-00001/spo2" {
		t.Fatalf("clinician got %s before the probe: the security event reached it", m.Topic())
	}

	// One principal, two roles over time: a persistent session subscribed
	// as operator, an event queued while away, then a clinician's token.
	sub := "shift-lead"
	away := pahoClient(t, "ssl://"+b.AppsAddr(), appTLS(t, dir), "lead", "app", mintRole(t, dir, sub, pki.RoleOperator, "site1"), false)
	wait(t, away.SubscribeMultiple(map[string]byte{"security/site1/#": 1, "telemetry/site1/#": 1}, nil), "subscribe")
	away.Disconnect(100)
	wait(t, gw.Publish("security/site1/gw1", 1, false, `{"event":"queued"}`), "gateway publish event")
	back := newInbox()
	o := paho.NewClientOptions().AddBroker("ssl://" + b.AppsAddr()).SetClientID("lead").SetTLSConfig(appTLS(t, dir)).
		SetCleanSession(false).SetAutoReconnect(false).SetProtocolVersion(4).SetOrderMatters(false).
		SetUsername("app").SetPassword(mintRole(t, dir, sub, pki.RoleClinician, "site1")).SetDefaultPublishHandler(back.handler)
	c := paho.NewClient(o)
	wait(t, c.Connect(), "reconnect as clinician")
	t.Cleanup(func() { c.Disconnect(100) })
	wait(t, gw.Publish("security/site1/gw1", 1, false, `{"event":"later"}`), "gateway publish event")
	wait(t, gw.Publish("telemetry/site1/dev-00001/spo2", 1, false, "probe"), "gateway publish probe")
	if m := back.next(t); m.Topic() != "telemetry/site1/dev-00001/spo2" {
		t.Fatalf("clinician's session got %s (%q): it kept the operator's security subscription", m.Topic(), m.Payload())
	}
}

// TestExporterRoleNotFromTokens: the FHIR exporter is the broker's own;
// certs token does not mint its role and a token signed with the app-token
// key that claims it is refused at CONNECT. No app publishes on fhir/, not
// even an operator.
func TestExporterRoleNotFromTokens(t *testing.T) {
	dir := testPKI(t)
	if _, err := pki.MintRoleToken(dir, "x", pki.RoleExporter, []string{"site1"}, time.Hour); err == nil {
		t.Fatal("MintRoleToken minted an exporter's token")
	}
	b, _ := startBroker(t, testConfig(dir, ""))
	forged := signAppClaims(t, dir, jwt.MapClaims{"sub": "fhir", "sites": []string{"site1"}, "role": pki.RoleExporter})
	c, err := rawDial(t, b.AppsAddr(), appTLS(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	if code, err := c.connect("fhir", "app", forged); err != nil || code != packets.ErrBadUsernameOrPassword.Code {
		t.Fatalf("token with role exporter: CONNACK %#x err %v, want %#x", code, err, packets.ErrBadUsernameOrPassword.Code)
	}
	ops := connectedApp(t, b, dir, "ops", mintRole(t, dir, "ops", pki.RoleOperator, "site1"))
	if code, err := ops.publish("fhir/site1/dev-00001", []byte(`{}`)); err != nil || code != packets.ErrNotAuthorized.Code {
		t.Fatalf("operator publish on fhir/: code %#x err %v", code, err)
	}
}

// signAppClaims signs claims with the PKI's app-token key (ES256), adding
// iss, aud, iat, exp and jti when absent.
func signAppClaims(t *testing.T, dir string, claims jwt.MapClaims) string {
	t.Helper()
	key, err := pki.LoadKey(filepath.Join(dir, pki.FileAppTokenKey))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for k, v := range map[string]any{"iss": pki.TokenIssuer, "aud": pki.TokenAudience, "iat": now.Unix(),
		"exp": now.Add(time.Hour).Unix(), "jti": "0123456789abcdef0123456789abcdef"} {
		if _, ok := claims[k]; !ok {
			claims[k] = v
		}
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodES256, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// paho5Client is an MQTT 5 app (paho.golang) that only subscribes.
type paho5Client struct{ c *paho5.Client }

func dialPaho5(t *testing.T, b *Broker, dir, clientID, tok string) *paho5Client {
	t.Helper()
	conn, err := tls.Dial("tcp", b.AppsAddr(), appTLS(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	c := paho5.NewClient(paho5.ClientConfig{Conn: packets5.NewThreadSafeConn(conn)})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ack, err := c.Connect(ctx, &paho5.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true,
		Password: []byte(tok), PasswordFlag: true})
	if err != nil || ack.ReasonCode != 0 {
		t.Fatalf("MQTT 5 connect %s: %v %+v", clientID, err, ack)
	}
	return &paho5Client{c: c}
}

// subscribeCode subscribes to one filter and returns the SUBACK's reason code.
func (p *paho5Client) subscribeCode(t *testing.T, filter string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	sa, err := p.c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if sa == nil || len(sa.Reasons) != 1 {
		t.Fatalf("MQTT 5 subscribe %s: %v %+v", filter, err, sa)
	}
	return sa.Reasons[0]
}
