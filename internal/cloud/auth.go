package cloud

import (
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/subcap"
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
	exp   time.Time // apps: token expiry
	// counted: OnSessionEstablished added the connection to the
	// connections gauge (under authHook.mu), so forgetting it subtracts it.
	counted bool
	// dropping: a delivery to this connection was dropped (logged once).
	dropping atomic.Bool
	// expiring: the token expired and the disconnect is under way.
	expiring atomic.Bool
}

// owner is stored in the session's username (which mochi persists), so that a
// client ID, and the queue of its persistent session, cannot be taken over by
// another principal, also after a restart.
func (id *identity) owner() string {
	if id.kind == kindGateway {
		return "gateway:" + id.site + "/" + id.name
	}
	return "app:" + id.name
}

// AppClaims are the claims of an app token (docs/design.md#trust): the
// subject, the sites the app may read, and the registered claims (iss, aud,
// exp, iat).
type AppClaims struct {
	Sites []string `json:"sites"`
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

	mu  sync.RWMutex
	ids map[*mqtt.Client]*identity
}

func newAuthHook(b *Broker, key crypto.PublicKey, gwCAs *x509.CertPool) *authHook {
	return &authHook{
		b:   b,
		key: key,
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
		id = h.authApp(cl, pk)
	default:
		h.refuse(cl, "unknown", "listener", "no authentication for this listener")
	}
	if id == nil {
		return nil // OnConnectAuthenticate refuses: CONNACK 0x86
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
		appSession := strings.HasPrefix(owner, "app:")
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
	id := &identity{kind: kindGateway, name: gw, site: site}
	if cl.Properties.Will.Flag != 0 && !gatewayMayPublish(id, cl.Properties.Will.TopicName) {
		h.refuse(cl, kindGateway, "will_topic", "will topic outside the gateway's own prefixes", "gateway", gw)
		return nil
	}
	return id
}

func (h *authHook) authApp(cl *mqtt.Client, pk packets.Packet) *identity {
	tok := pk.Connect.Password
	if len(tok) == 0 {
		h.refuse(cl, kindApp, "no_token", "no token in the password field")
		return nil
	}
	if len(tok) > maxTokenLen {
		h.refuse(cl, kindApp, "malformed", "token too long")
		return nil
	}
	var c AppClaims
	_, err := h.parser.ParseWithClaims(string(tok), &c, func(*jwt.Token) (any, error) { return h.key, nil })
	if err == nil && !time.Now().Before(c.ExpiresAt.Time) {
		// The parser's leeway is for clocks that disagree on iat and nbf;
		// exp is one rule for CONNECT and deliveries alike: valid before
		// exp, not after (a CONNECT accepted in the leeway then had every
		// subscription and delivery refused).
		err = jwt.ErrTokenExpired
	}
	if err != nil {
		reason := tokenReason(err)
		h.refuse(cl, kindApp, reason, flatTokenError(reason))
		return nil
	}
	if !validSubject(c.Subject) {
		h.refuse(cl, kindApp, "bad_claims", "sub missing or invalid")
		return nil
	}
	sites := map[string]bool{}
	for _, s := range c.Sites {
		if !validName(s) {
			h.refuse(cl, kindApp, "bad_claims", "invalid site in sites", "sub", c.Subject)
			return nil
		}
		sites[s] = true
	}
	if len(sites) == 0 {
		h.refuse(cl, kindApp, "bad_claims", "no sites", "sub", c.Subject)
		return nil
	}
	if cl.Properties.Will.Flag != 0 {
		h.refuse(cl, kindApp, "will", "apps may not publish, not even a will", "sub", c.Subject)
		return nil
	}
	return &identity{kind: kindApp, name: c.Subject, sites: sites, exp: c.ExpiresAt.Time}
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

// OnSessionEstablish runs before mochi hands an existing session to the new
// connection: the app's current token decides what of the old session it may
// keep, so a token with fewer sites does not inherit other sites' queue.
func (h *authHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	id := h.get(cl)
	if id == nil || id.kind != kindApp {
		return
	}
	prev, ok := h.b.srv.Clients.Get(cl.ID)
	if !ok || prev == cl {
		return
	}
	for filter := range prev.State.Subscriptions.GetAll() {
		if !appMayRead(id, filter) {
			h.b.srv.Topics.Unsubscribe(filter, prev.ID)
			prev.State.Subscriptions.Delete(filter)
			if h.b.store != nil {
				h.b.store.OnUnsubscribed(prev, packets.Packet{Filters: packets.Subscriptions{{Filter: filter}}})
			}
		}
	}
	for _, m := range prev.State.Inflight.GetAll(false) {
		if m.FixedHeader.Type == packets.Publish && !appMayRead(id, m.TopicName) {
			if prev.State.Inflight.Delete(m.PacketID) {
				atomic.AddInt64(&h.b.srv.Info.Inflight, -1)
				if h.b.store != nil {
					h.b.store.OnQosDropped(prev, m)
				}
			}
		}
	}
}

// OnSessionEstablished counts the connection.
func (h *authHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	h.mu.Lock()
	id := h.ids[cl]
	if id != nil {
		id.counted = true
		h.b.m.connections.WithLabelValues(id.kind).Inc()
	}
	h.mu.Unlock()
	if id != nil {
		h.b.log.Info("connected", "kind", id.kind, "name", id.name, "site", id.site, "client", cl.ID, "remote", cl.Net.Remote)
	}
}

// OnDisconnect forgets the connection's identity. Sessions restored from the
// store also pass here, without an identity. A connection closed because a
// write to it made no progress within the write timeout is a slow consumer:
// counted, and logged with the reason.
func (h *authHook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	if we, ok := cl.Net.Conn.(interface{ WriteErr() error }); ok {
		var ne net.Error
		if werr := we.WriteErr(); errors.As(werr, &ne) && ne.Timeout() {
			kind, name := kindOfListener(cl.Net.Listener), ""
			if id := h.get(cl); id != nil {
				kind, name = id.kind, id.name
			}
			h.b.m.slowConsumers.WithLabelValues(kind).Inc()
			h.b.log.Warn("slow consumer disconnected: it read nothing within the write timeout",
				"kind", kind, "name", name, "client", cl.ID, "remote", cl.Net.Remote,
				"queued", cl.State.Inflight.Len())
		}
	}
	h.forget(cl, err)
}

// OnPublishDropped counts a delivery dropped for a client: its session held
// max_inflight QoS 1 messages, or its write queue was full for a QoS 0 one.
// The first drop of a connection is logged.
func (h *authHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	id := h.get(cl)
	kind, name := kindOfListener(cl.Net.Listener), ""
	if id != nil {
		kind, name = id.kind, id.name
	}
	h.b.m.deliveriesDropped.WithLabelValues(kind).Inc()
	if id == nil || !id.dropping.Swap(true) {
		h.b.log.Warn("dropping deliveries to a client that does not keep up", "kind", kind, "name", name,
			"client", cl.ID, "queued", cl.State.Inflight.Len(), "topic", clip(pk.TopicName))
	}
}

// kindOfListener is the kind of client a listener serves.
func kindOfListener(listener string) string {
	if listener == listenerGateways {
		return kindGateway
	}
	return kindApp
}

// forget drops the identity of cl, once: from OnDisconnect, or from the sweep
// for a client mochi stopped without calling OnDisconnect (it returns from
// its connection handler without it when the CONNACK or the resend of the
// session's inflight messages fails). Only a counted connection leaves the
// gauge.
func (h *authHook) forget(cl *mqtt.Client, err error) {
	h.mu.Lock()
	id, ok := h.ids[cl]
	delete(h.ids, cl)
	if ok && id.counted {
		h.b.m.connections.WithLabelValues(id.kind).Dec()
	}
	h.mu.Unlock()
	if !ok {
		return
	}
	if id.counted {
		h.b.log.Info("disconnected", "kind", id.kind, "name", id.name, "client", cl.ID, "error", err)
	} else {
		h.b.log.Info("connection dropped before its session was established", "kind", id.kind, "name", id.name,
			"client", cl.ID, "error", err)
	}
}

// forgetStopped forgets the identities of clients stopped for longer than
// forgetStoppedAfter (see forget).
func (h *authHook) forgetStopped(now time.Time) {
	var stale []*mqtt.Client
	h.mu.RLock()
	for cl := range h.ids {
		if t := cl.StopTime(); t != 0 && now.Sub(time.Unix(t, 0)) > forgetStoppedAfter {
			stale = append(stale, cl)
		}
	}
	h.mu.RUnlock()
	for _, cl := range stale {
		h.forget(cl, cl.StopCause())
	}
}

// sweep is the broker's periodic check: it forgets the identities of
// stopped clients, then disconnects apps whose token has expired.
func (h *authHook) sweep(now time.Time) {
	h.forgetStopped(now)
	h.expireTokens(now)
}

// OnACLCheck decides publishes (write) and subscriptions and deliveries
// (!write; topic is then a filter or a topic name).
func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	id := h.get(cl)
	if id == nil {
		// A disconnected persistent session (or one restored from the store)
		// queues deliveries for subscriptions checked when they were made;
		// the next CONNECT's token prunes them (OnSessionEstablish).
		return !write && cl.Closed() && cl.Net.Listener != listenerGateways
	}
	var ok bool
	action := "subscribe"
	switch {
	case write && id.kind == kindGateway:
		ok, action = gatewayMayPublish(id, topic), "publish"
	case write:
		ok, action = false, "publish"
	default:
		ok = mayRead(id, topic, time.Now())
		if !ok && id.kind == kindApp && appMayRead(id, topic) {
			// Only the token's time is up. Disconnect now rather than at
			// the next sweep, and let this delivery through (at most the
			// moment it takes to disconnect): refused, it was lost to a
			// persistent session; from the disconnect on, the session
			// queues what arrives for the next CONNECT.
			h.expire(cl, id)
			return true
		}
	}
	if !ok {
		h.b.m.aclDenied.WithLabelValues(id.kind, action).Inc()
		h.b.log.Warn("acl denied", "kind", id.kind, "name", id.name, "action", action, "topic", clip(topic), "client", cl.ID)
	}
	return ok
}

// mayRead decides a subscription or a delivery: apps read the sites of
// their token while it is valid; gateways read nothing.
func mayRead(id *identity, topic string, now time.Time) bool {
	return id.kind == kindApp && appMayRead(id, topic) && now.Before(id.exp)
}

// OnSubscribe bounds the filters a session holds to maxSubscriptions. It sees
// the SUBSCRIBE before mochi checks its filters (OnACLCheck cannot count:
// mochi also calls it for every delivery). A filter beyond the bound is
// replaced by an invalid one, so mochi refuses it (0x8F, 3.1.1: 0x80) and
// stores nothing; filters the session holds already, and filters that
// OnACLCheck will refuse anyway, do not count.
func (h *authHook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	id := h.get(cl)
	if id == nil {
		return pk // OnACLCheck refuses every filter
	}
	now := time.Now()
	pk.Filters = scopeShares(id, pk.Filters, func(f string) {
		h.b.m.aclDenied.WithLabelValues(id.kind, "subscribe").Inc()
		h.b.log.Warn("acl denied", "kind", id.kind, "name", id.name, "action", "subscribe", "topic", clip(f),
			"client", cl.ID, "detail", "malformed shared subscription (an empty share name, a wildcard in it, or no filter)")
	})
	return subcap.Apply(cl, pk, maxSubscriptions, func(f string) bool { return mayRead(id, f, now) }, func(f string) {
		h.b.m.aclDenied.WithLabelValues(id.kind, "subscribe").Inc()
		h.b.log.Warn("acl denied", "kind", id.kind, "name", id.name, "action", "subscribe", "topic", clip(f),
			"client", cl.ID, "detail", fmt.Sprintf("the session holds %d subscriptions, the most allowed", maxSubscriptions))
	})
}

// OnUnsubscribe names an app's shared subscriptions as OnSubscribe stored
// them, in its principal's scope.
func (h *authHook) OnUnsubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if id := h.get(cl); id != nil {
		pk.Filters = scopeShares(id, pk.Filters, func(string) {})
	}
	return pk
}

// badShare replaces a malformed shared subscription filter: mochi finds it
// invalid and refuses it (0x8F, MQTT 3.1.1: 0x80).
const badShare = "#/malformed-share"

// scopeShares puts the share groups of subs in the scope of the app's
// principal: `$share/{group}/{filter}` becomes
// `$share/{scope}.{group}/{filter}`, where scope is derived from the token
// subject, so apps of different principals that pick the same group name
// each get every message (a group shares the load of one principal's
// instances only). A share name that is empty or holds a wildcard, or one
// without a filter after it, is malformed (MQTT 5 section 4.8.2) and is
// refused, and reported to refused. It returns subs itself when nothing
// changes.
func scopeShares(id *identity, subs packets.Subscriptions, refused func(filter string)) packets.Subscriptions {
	var out packets.Subscriptions
	for i, sub := range subs {
		prefix, rest, ok := strings.Cut(sub.Filter, "/")
		if !ok || !strings.EqualFold(prefix, "$share") {
			continue
		}
		if out == nil {
			out = slices.Clone(subs)
		}
		group, filter, ok := strings.Cut(rest, "/")
		if !ok || group == "" || filter == "" || strings.ContainsAny(group, "+#") || id.kind != kindApp {
			out[i].Filter = badShare
			refused(sub.Filter)
			continue
		}
		out[i].Filter = "$share/" + id.shareScope() + "." + group + "/" + filter
	}
	if out == nil {
		return subs
	}
	return out
}

// shareScope names the app's principal in its share groups: the first 8
// bytes of the SHA-256 of the token subject, in hex (subjects may hold `/`
// and wildcards, which a share name may not).
func (id *identity) shareScope() string {
	sum := sha256.Sum256([]byte(id.name))
	return hex.EncodeToString(sum[:8])
}

// clip shortens a topic or filter for a log line.
func clip(s string) string {
	if len(s) > 128 {
		return s[:128] + "..."
	}
	return s
}

// Top-level topic prefixes of docs/apps.md#messages.
var prefixes = map[string]bool{"telemetry": true, "security": true, "gateways": true}

// topicBounded: at most maxTopicLen bytes and maxTopicLevels levels.
func topicBounded(topic string) bool {
	return len(topic) <= maxTopicLen && strings.Count(topic, "/") < maxTopicLevels
}

// gatewayMayPublish: telemetry/{site}/..., security/{site}/{gw}[/...] and
// gateways/{site}/{gw}/... for the certificate's site and gateway ID, within
// the bounds of topicBounded. The gateway ID level is checked too, so one
// gateway cannot speak for another of its site (its status or its security
// events).
func gatewayMayPublish(id *identity, topic string) bool {
	if !topicBounded(topic) {
		return false
	}
	lv := strings.Split(topic, "/")
	if len(lv) < 3 || !prefixes[lv[0]] || lv[1] != id.site {
		return false
	}
	for _, l := range lv {
		if l == "" || strings.ContainsAny(l, "+#") {
			return false
		}
	}
	if lv[0] == "telemetry" {
		return true
	}
	return lv[2] == id.name
}

// appMayRead: a filter or topic under telemetry/, security/ or gateways/ of a
// site in the token, both first levels literal (so `#`, `+/...` and
// `telemetry/+/...` are refused), within the bounds of topicBounded. A shared
// subscription is judged by the filter after `$share/{group}/`.
func appMayRead(id *identity, filter string) bool {
	if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
		_, f, found := strings.Cut(rest, "/")
		if !found {
			return false
		}
		filter = f
	}
	if !topicBounded(filter) {
		return false
	}
	lv := strings.SplitN(filter, "/", 3)
	if len(lv) < 2 || !prefixes[lv[0]] {
		return false
	}
	return id.sites[lv[1]]
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

// expireTokens disconnects apps whose token has expired.
// expire disconnects an app whose token expired, once, without holding up
// the caller (a publisher delivering to it).
func (h *authHook) expire(cl *mqtt.Client, id *identity) {
	if id.expiring.Swap(true) {
		return
	}
	h.b.log.Info("token expired: disconnecting", "client", cl.ID, "name", id.name)
	h.b.goroutine(func() { _ = h.b.srv.DisconnectClient(cl, packets.ErrNotAuthorized) })
}

func (h *authHook) expireTokens(now time.Time) {
	var late []*mqtt.Client
	h.mu.RLock()
	for cl, id := range h.ids {
		if id.kind == kindApp && !now.Before(id.exp) {
			late = append(late, cl)
		}
	}
	h.mu.RUnlock()
	for _, cl := range late {
		if id := h.get(cl); id != nil {
			h.expire(cl, id)
		}
	}
}

// verifyGatewayCert is the gateway listener's VerifyConnection: the chain
// must lead to gateway-ca.crt and allow client authentication. Failures are
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
	return nil
}

func (h *authHook) tlsRefused(remote, reason, detail string) {
	h.b.m.authFailures.WithLabelValues(kindGateway, reason).Inc()
	h.b.log.Warn("gateway handshake refused", "reason", reason, "detail", detail, "remote", remote)
}
