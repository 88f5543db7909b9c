package cloud

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/subcap"
)

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
	case write && id.kind == kindExporter:
		ok, action = exporterMayPublish(id, topic), "publish"
	case write:
		ok, action = appMayPublish(id, topic, time.Now()), "publish"
	case id.kind == kindGateway:
		ok = gatewayMayRead(id, topic)
	case id.kind == kindExporter:
		ok = exporterMayRead(id, topic)
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
	return subcap.Apply(cl, pk, maxSubscriptions, func(f string) bool {
		return mayRead(id, f, now) || id.kind == kindGateway && gatewayMayRead(id, f) ||
			id.kind == kindExporter && exporterMayRead(id, f)
	}, func(f string) {
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
// bytes of the SHA-256 of its owner (the token subject behind "app:", or
// behind "oidc:" and the provider's issuer for one signed in through
// OpenID Connect), in hex (subjects may hold `/` and wildcards, which a
// share name may not). The prefix keeps a local subject that spells a
// provider's principal out of that person's groups.
func (id *identity) shareScope() string {
	sum := sha256.Sum256([]byte(id.owner()))
	return hex.EncodeToString(sum[:8])
}

// clip shortens a topic or filter for a log line.
func clip(s string) string {
	if len(s) > 128 {
		return s[:128] + "..."
	}
	return s
}

// Top-level topic prefixes of docs/apps.md#messages that gateways publish.
var prefixes = map[string]bool{"telemetry": true, "security": true, "gateways": true, "certs": true,
	"jobs": true, "inventory": true}

// Top-level topic prefixes each role reads (docs/apps.md#roles): a clinician
// the patients' data and what it takes to trust it; an operator also the
// security events, rollouts and inventory.
var (
	clinicianReads = map[string]bool{"telemetry": true, "fhir": true, "gateways": true, "certs": true}
	operatorReads  = map[string]bool{"telemetry": true, "fhir": true, "gateways": true, "certs": true,
		"security": true, "jobs": true, "inventory": true}
)

// roleReads returns the prefixes an app of role reads; an unknown role reads
// nothing.
func roleReads(role string) map[string]bool {
	switch role {
	case pki.RoleClinician:
		return clinicianReads
	case pki.RoleOperator:
		return operatorReads
	}
	return nil
}

// topicBounded: at most maxTopicLen bytes and maxTopicLevels levels.
func topicBounded(topic string) bool {
	return len(topic) <= maxTopicLen && strings.Count(topic, "/") < maxTopicLevels
}

// gatewayMayPublish: telemetry/{site}/..., certs/{site}/{device},
// security/{site}/{gw}[/...] and gateways/{site}/{gw}/... for the
// certificate's site and gateway ID, within the bounds of topicBounded. The
// gateway ID level is checked too, so one gateway cannot speak for another of
// its site (its status or its security events). Retained messages are allowed
// on all of them (status and certificate chains are retained).
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
	switch lv[0] {
	case "telemetry":
		return true
	case "certs", "inventory":
		return len(lv) == 3 && pki.ValidDeviceID(lv[2])
	case "jobs":
		// A job's status: jobs/{site}/{job}/status and
		// jobs/{site}/{job}/status/{device}; never the job itself.
		return len(lv) >= 4 && len(lv) <= 5 && lv[3] == "status" &&
			(len(lv) == 4 || pki.ValidDeviceID(lv[4]))
	}
	return lv[2] == id.name
}

// gatewayMayRead: the rollout jobs of the gateway's own site, the filter
// jobs/{site}/+ (what the relay subscribes to) and its deliveries
// jobs/{site}/{job}. Nothing else: a gateway takes no other message from
// the cloud.
func gatewayMayRead(id *identity, topic string) bool {
	lv := strings.Split(topic, "/")
	if len(lv) != 3 || lv[0] != "jobs" || lv[1] != id.site {
		return false
	}
	return lv[2] == "+" || pki.ValidDeviceID(lv[2])
}

// appMayPublish: an operator (token role pki.RoleOperator, while the token
// is valid) publishes a rollout job, retained or not, on jobs/{site}/{job}
// of a site of its token, the job ID in the alphabet of device IDs. Other
// apps publish nothing.
func appMayPublish(id *identity, topic string, now time.Time) bool {
	if id.role != pki.RoleOperator || !now.Before(id.exp) || !topicBounded(topic) {
		return false
	}
	lv := strings.Split(topic, "/")
	return len(lv) == 3 && lv[0] == "jobs" && id.sites[lv[1]] && pki.ValidDeviceID(lv[2])
}

// appMayRead: a filter or topic under a prefix the app's role reads
// (roleReads: telemetry/, fhir/, gateways/ and certs/; for an operator also
// security/, jobs/ and inventory/) of a site in the token, both first levels
// literal (so `#`, `+/...` and `telemetry/+/...` are refused), within the
// bounds of topicBounded. A shared subscription is judged by the filter
// after `$share/{group}/`.
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
	if len(lv) < 2 || !roleReads(id.role)[lv[0]] {
		return false
	}
	return id.sites[lv[1]]
}
