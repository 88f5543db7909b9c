// Package subcap bounds the number of subscriptions an MQTT session holds on
// a mochi server.
//
// The count cannot be kept in mochi's OnACLCheck, which mochi also calls for
// every delivery (a topic name, not a new filter); it is kept in OnSubscribe,
// which sees the SUBSCRIBE before mochi checks its filters.
package subcap

import (
	"slices"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Refused replaces a filter beyond the bound: mochi finds it invalid and
// answers 0x8F (MQTT 3.1.1: 0x80) for it, so the SUBACK keeps one reason
// code per filter and nothing is subscribed.
const Refused = "#/subscription-limit"

// Apply is an OnSubscribe body: it returns pk with the filters that would
// take cl's session beyond max subscriptions replaced by [Refused], and
// calls refused for each. Filters the session holds already (resubscribing
// replaces them), repeats within pk, and filters for which allowed is false
// (the ACL refuses them anyway) do not count.
func Apply(cl *mqtt.Client, pk packets.Packet, max int, allowed func(filter string) bool, refused func(filter string)) packets.Packet {
	held := cl.State.Subscriptions.Len()
	if held+len(pk.Filters) <= max {
		return pk
	}
	filters := slices.Clone(pk.Filters)
	counted := make(map[string]bool, len(filters))
	changed := false
	for i, sub := range filters {
		if _, ok := cl.State.Subscriptions.Get(sub.Filter); ok || counted[sub.Filter] || !allowed(sub.Filter) {
			continue
		}
		if held < max {
			held++
			counted[sub.Filter] = true
			continue
		}
		filters[i].Filter = Refused
		changed = true
		refused(sub.Filter)
	}
	if changed {
		pk.Filters = filters
	}
	return pk
}
