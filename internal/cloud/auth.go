package cloud

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/internal/oidc"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// Kinds of client, as metrics and logs name them.
const (
	kindGateway = "gateway"
	kindApp     = "app"
)

// maxTokenLen bounds the JWT read from the password field.
const maxTokenLen = 8 << 10

// Bounds of what one client may ask of the topic index. The contract's
// topics have 3 or 4 levels (docs/apps.md#messages); mochi builds one node per
// level of a filter, with work quadratic in the depth, holding the index lock
// that every publish takes.
const (
	maxTopicLevels = 8   // levels of a topic name or filter (after $share/{group}/)
	maxTopicLen    = 512 // bytes of a topic name or filter (after $share/{group}/)
	// maxSubscriptions bounds the filters one session holds.
	maxSubscriptions = 64
	// maxAppSessions bounds the sessions, connected or not, that one app
	// principal (token subject) holds: each disconnected persistent session
	// queues up to max_inflight messages for session_expiry.
	maxAppSessions = 16
	// forgetStoppedAfter: the sweep forgets the identity of a client stopped
	// for longer than this (one mochi dropped without OnDisconnect, e.g.
	// when the CONNACK could not be written). Normal disconnects are
	// forgotten at once by OnDisconnect.
	forgetStoppedAfter = 3 * time.Second
)

// identity is what the broker knows of an authenticated connection.
type identity struct {
	kind  string
	name  string // gateway ID or token subject
	site  string // gateway's site
	sites map[string]bool
	role  string // apps: pki.RoleClinician, pki.RoleOperator or (the broker's own exporter) pki.RoleExporter
	// issuer: apps signed in through the outside OpenID Connect provider:
	// its issuer; "" for tokens of the app-token key.
	issuer string
	exp    time.Time // apps: token expiry
	jti    string    // apps: token ID, what revoked-tokens lists
	// serial is a gateway's client certificate serial, what
	// gateway-crl.pem lists.
	serial *big.Int
	// counted: OnSessionEstablished added the connection to the
	// connections gauge (under authHook.mu), so forgetting it subtracts it.
	counted bool
	// dropping: a delivery to this connection was dropped (logged once).
	dropping atomic.Bool
	// expiring: the token expired and the disconnect is under way.
	expiring atomic.Bool
	// revoked: the certificate or token was revoked and the disconnect is
	// under way.
	revoked atomic.Bool
}

// owner is stored in the session's username (which mochi persists), so that a
// client ID, and the queue of its persistent session, cannot be taken over by
// another principal, also after a restart.
func (id *identity) owner() string {
	if id.kind == kindGateway {
		return "gateway:" + id.site + "/" + id.name
	}
	if id.kind == kindExporter {
		return "exporter:" + id.name
	}
	if id.issuer != "" {
		// The provider's subjects are its own: never the session of a
		// token of the app-token key with the same sub.
		return "oidc:" + id.issuer + " " + id.name
	}
	return "app:" + id.name
}

// AppClaims are the claims of an app token (docs/design.md#trust): the
// subject, the sites the app may read, and the registered claims (iss, aud,
// exp, iat).
type AppClaims struct {
	Sites []string `json:"sites"`
	Role  string   `json:"role,omitempty"`
	jwt.RegisteredClaims
}

// authHook is the broker's one mochi hook: it authenticates every CONNECT and
// checks every publish, subscription and delivery. mochi ORs
// OnConnectAuthenticate and OnACLCheck across hooks, so no other hook may
// provide them.
type authHook struct {
	mqtt.HookBase
	b      *Broker
	parser *jwt.Parser
	key    crypto.PublicKey
	gwCAs  *x509.CertPool
	oidc   *oidc.Verifier // nil without an outside provider

	mu  sync.RWMutex
	ids map[*mqtt.Client]*identity
}

func newAuthHook(b *Broker, key crypto.PublicKey, gwCAs *x509.CertPool, v *oidc.Verifier) *authHook {
	return &authHook{
		b:    b,
		key:  key,
		oidc: v,
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{"ES256", "EdDSA"}),
			jwt.WithIssuer(pki.TokenIssuer),
			jwt.WithAudience(pki.TokenAudience),
			jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(),
			jwt.WithLeeway(30*time.Second),
		),
		gwCAs: gwCAs,
		ids:   map[*mqtt.Client]*identity{},
	}
}

// ID names the hook in mochi's logs.
func (h *authHook) ID() string { return "vitalgate-auth" }

// Provides lists the events the hook handles.
func (h *authHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnSubscribe,
		mqtt.OnSessionEstablish, mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnPublishDropped,
		mqtt.OnUnsubscribe:
		return true
	}
	return false
}

func (h *authHook) get(cl *mqtt.Client) *identity {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.ids[cl]
}

// refuse counts and logs a refused CONNECT. It never logs the token.
func (h *authHook) refuse(cl *mqtt.Client, kind, reason, detail string, attrs ...any) bool {
	h.b.m.authFailures.WithLabelValues(kind, reason).Inc()
	args := append([]any{"kind", kind, "reason", reason, "detail", detail, "client", cl.ID,
		"remote", cl.Net.Remote, "listener", cl.Net.Listener}, attrs...)
	h.b.log.Warn("connect refused", args...)
	return false
}

// OnConnect admits a gateway by its client certificate and an app by its
// token. It runs after the TLS handshake, before CONNACK, and before mochi's
// OnConnectAuthenticate, which only reads its result: here the broker can
// still answer with a reason code of its own (quota exceeded), which
// OnConnectAuthenticate cannot (refusing there always means 0x86).
func (h *authHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	var id *identity
	switch cl.Net.Listener {
	case listenerGateways:
		id = h.authGateway(cl)
	case listenerApps, listenerWS:
		var err error
		if id, err = h.authApp(cl, pk); err != nil {
			return err // CONNACK sent
		}
	case listenerExporter:
		id = h.b.exporterIdentity()
	default:
		h.refuse(cl, "unknown", "listener", "no authentication for this listener")
	}
	if id == nil {
		return nil // OnConnectAuthenticate refuses: CONNACK 0x86
	}
	if id.kind != kindExporter && cl.ID == exporterClientID {
		// Reserved: a client holding it would lock the FHIR exporter out.
		h.refuse(cl, id.kind, "client_id_in_use", "client ID reserved for the broker's FHIR exporter")
		return nil
	}
	prev, held := h.b.srv.Clients.Get(cl.ID)
	// A client ID belongs to the principal that created its session; for a
	// gateway that is its site and ID, so a gateway of another site with
	// the same ID (every `certs init` defaults to gw1) cannot take over the
	// session, or flap with it. A gateway's own reconnect (its old TCP
	// connection still open, or a session restored from the store, whose
	// username mochi persists) has the same owner and takes over. A gateway
	// also takes over a session an app made under its ID: its relay uses a
	// clean session, so its ID is free between connections, and an app that
	// took it would otherwise lock the gateway out for session_expiry.
	if held {
		owner := string(prev.Properties.Username)
		appSession := strings.HasPrefix(owner, "app:") || strings.HasPrefix(owner, "oidc:")
		if owner != "" && owner != id.owner() && !(id.kind == kindGateway && appSession) {
			h.refuse(cl, id.kind, "client_id_in_use", "client ID belongs to another principal", "owner", owner)
			return nil
		}
	}
	if id.kind == kindApp && !held {
		if n := h.sessionsOf(id.owner()); n >= maxAppSessions {
			h.refuse(cl, id.kind, "sessions", fmt.Sprintf("the principal holds %d sessions, the most allowed; reuse a client ID or let a session expire", n),
				"sub", id.name)
			code := packets.ErrQuotaExceeded
			if cl.Properties.ProtocolVersion < 5 {
				code = packets.ErrBadUsernameOrPassword // 3.1.1: return code 5, not authorized
			}
			if err := h.b.srv.SendConnack(cl, code, false, nil); err != nil {
				return fmt.Errorf("send connack: %w", err)
			}
			return code
		}
	}
	cl.Properties.Username = []byte(id.owner())
	h.mu.Lock()
	h.ids[cl] = id
	h.mu.Unlock()
	return nil
}

// OnConnectAuthenticate admits the connections OnConnect identified.
func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	return h.get(cl) != nil
}

// sessionsOf counts the sessions, connected or not, whose owner is owner.
// Apps connect rarely, so a walk of every session is affordable.
func (h *authHook) sessionsOf(owner string) int {
	n := 0
	for _, cl := range h.b.srv.Clients.GetAll() {
		if string(cl.Properties.Username) == owner {
			n++
		}
	}
	return n
}

func (h *authHook) authGateway(cl *mqtt.Client) *identity {
	// A *tls.Conn, or a connection wrapping one (packetconn.Batching).
	tc, ok := cl.Net.Conn.(interface{ ConnectionState() tls.ConnectionState })
	if !ok || tc.ConnectionState().Version == 0 {
		h.refuse(cl, kindGateway, "no_tls", "not a TLS connection")
		return nil
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		h.refuse(cl, kindGateway, "no_cert", "no client certificate")
		return nil
	}
	site, gw := pki.ParseSiteAndID(certs[0])
	if !validName(site) || !validName(gw) {
		h.refuse(cl, kindGateway, "bad_cert", "certificate lacks a valid site (OU) or gateway ID (CN)")
		return nil
	}
	if cl.ID != gw {
		h.refuse(cl, kindGateway, "client_id", "client ID is not the certificate's gateway ID", "gateway", gw)
		return nil
	}
	if h.b.rev.gatewayRevoked(certs[0].SerialNumber) { // revoked since the handshake
		h.refuse(cl, kindGateway, "revoked", "certificate revoked (on gateway-crl.pem)", "gateway", gw)
		return nil
	}
	id := &identity{kind: kindGateway, name: gw, site: site, serial: certs[0].SerialNumber}
	if cl.Properties.Will.Flag != 0 && !gatewayMayPublish(id, cl.Properties.Will.TopicName) {
		h.refuse(cl, kindGateway, "will_topic", "will topic outside the gateway's own prefixes", "gateway", gw)
		return nil
	}
	return id
}

// authApp checks an app's token: one of the app-token key (iss
// pki.TokenIssuer) or, when configured, one of the outside OpenID Connect
// provider (its iss). It returns a nil identity to refuse with CONNACK 0x86,
// or an error when it has sent a CONNACK of its own (a revoked token: not
// authorized).
func (h *authHook) authApp(cl *mqtt.Client, pk packets.Packet) (*identity, error) {
	tok := pk.Connect.Password
	if len(tok) == 0 {
		h.refuse(cl, kindApp, "no_token", "no token in the password field")
		return nil, nil
	}
	if len(tok) > maxTokenLen {
		h.refuse(cl, kindApp, "malformed", "token too long")
		return nil, nil
	}
	c, reason, detail := h.verifyToken(string(tok))
	if c == nil {
		h.refuse(cl, kindApp, reason, detail)
		return nil, nil
	}
	src := "app-token key"
	if c.issuer != "" {
		src = "oidc " + c.issuer
	}
	if !validSubject(c.sub) {
		h.refuse(cl, kindApp, "bad_claims", "sub missing or invalid", "issuer", src)
		return nil, nil
	}
	sites := map[string]bool{}
	for _, s := range c.sites {
		if !validName(s) {
			h.refuse(cl, kindApp, "bad_claims", "invalid site in sites", "sub", c.sub, "issuer", src)
			return nil, nil
		}
		sites[s] = true
	}
	if len(sites) == 0 {
		h.refuse(cl, kindApp, "bad_claims", "no sites", "sub", c.sub, "issuer", src)
		return nil, nil
	}
	if !pki.ValidRole(c.role) {
		h.refuse(cl, kindApp, "bad_claims", "unknown role (want clinician or operator)", "sub", c.sub, "issuer", src)
		return nil, nil
	}
	if c.jti == "" && c.issuer == "" {
		h.refuse(cl, kindApp, "no_jti", "token has no jti, so it could never be revoked: mint a new one with certs token", "sub", c.sub)
		return nil, nil
	}
	if c.jti != "" && !pki.ValidTokenID(c.jti) {
		h.refuse(cl, kindApp, "bad_claims", "jti invalid", "sub", c.sub, "issuer", src)
		return nil, nil
	}
	if c.jti != "" && h.b.rev.tokenRevoked(c.jti) {
		return nil, h.refuseRevoked(cl, c.sub, c.jti)
	}
	if cl.Properties.Will.Flag != 0 {
		h.refuse(cl, kindApp, "will", "apps may not publish, not even a will", "sub", c.sub)
		return nil, nil
	}
	return &identity{kind: kindApp, name: c.sub, issuer: c.issuer, sites: sites, role: pki.TokenRole(c.role),
		exp: c.exp, jti: c.jti}, nil
}

// verifyLocal checks a token of the app-token key.
func (h *authHook) verifyLocal(tok string) (*appClaims, string, string) {
	var c AppClaims
	_, err := h.parser.ParseWithClaims(tok, &c, func(*jwt.Token) (any, error) { return h.key, nil })
	if err == nil && !time.Now().Before(c.ExpiresAt.Time) {
		// The parser's leeway is for clocks that disagree on iat and nbf;
		// exp is one rule for CONNECT and deliveries alike: valid before
		// exp, not after (a CONNECT accepted in the leeway then had every
		// subscription and delivery refused).
		err = jwt.ErrTokenExpired
	}
	if err != nil {
		reason := tokenReason(err)
		return nil, reason, flatTokenError(reason)
	}
	return &appClaims{sub: c.Subject, sites: c.Sites, role: c.Role, exp: c.ExpiresAt.Time, jti: c.ID}, "", ""
}

// tokenReason maps a JWT error to a metric label.
func tokenReason(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "expired"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "missing_claim"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "audience"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "issuer"
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "not_yet_valid"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return "bad_signature"
	}
	return "invalid"
}

// flatTokenError is the log detail of a token reason: flat, no token bytes.
func flatTokenError(reason string) string {
	switch reason {
	case "malformed":
		return "token is not a JWT"
	case "expired":
		return "token expired"
	case "missing_claim":
		return "token lacks a required claim (exp)"
	case "audience":
		return "token audience is not " + pki.TokenAudience
	case "issuer":
		return "token issuer is not " + pki.TokenIssuer
	case "not_yet_valid":
		return "token not valid yet"
	case "bad_signature":
		return "token signature or algorithm refused (ES256/EdDSA with app-token key only)"
	}
	return "token invalid"
}

// validName: the character set of IDs (docs/design.md#trust), which also
// keeps MQTT wildcards and level separators out of sites and gateway IDs.
func validName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// validSubject: a token subject of 1..256 printable characters.
func validSubject(s string) bool {
	if len(s) == 0 || len(s) > 256 {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// verifyGatewayCert is the gateway listener's VerifyConnection (also on
// resumed sessions): the chain must lead to gateway-ca.crt and allow client
// authentication, and the certificate must not be on gateway-crl.pem. Failures are
// counted and logged (the TLS stack alone would only close the socket).
func (h *authHook) verifyGatewayCert(cs tls.ConnectionState, remote string) error {
	if len(cs.PeerCertificates) == 0 {
		h.tlsRefused(remote, "no_cert", "no client certificate")
		return errors.New("client certificate required")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		Roots:         h.gwCAs,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		h.tlsRefused(remote, "untrusted_cert", fmt.Sprintf("certificate %q does not chain to the gateway CA", cs.PeerCertificates[0].Subject.CommonName))
		return errors.New("client certificate not issued by the gateway CA")
	}
	if leaf := cs.PeerCertificates[0]; h.b.rev.gatewayRevoked(leaf.SerialNumber) {
		h.tlsRefused(remote, "revoked", fmt.Sprintf("certificate %q (serial %x) is on gateway-crl.pem", leaf.Subject.CommonName, leaf.SerialNumber))
		return errors.New("client certificate revoked")
	}
	return nil
}

func (h *authHook) tlsRefused(remote, reason, detail string) {
	h.b.m.authFailures.WithLabelValues(kindGateway, reason).Inc()
	h.b.log.Warn("gateway handshake refused", "reason", reason, "detail", detail, "remote", remote)
}
