package cloud

import (
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/vitalgate/vitalgate/internal/oidc"
	"github.com/vitalgate/vitalgate/internal/version"
)

// metrics are the broker's Prometheus series, in a registry of its own so
// that a gateway embedding the broker keeps its own registry clean.
type metrics struct {
	reg          *prometheus.Registry
	connections  *prometheus.GaugeVec   // kind
	authFailures *prometheus.CounterVec // kind, reason
	aclDenied    *prometheus.CounterVec // kind, action
	// deliveriesDropped counts messages dropped for a client that does not
	// keep up; slowConsumers the clients disconnected for it.
	deliveriesDropped *prometheus.CounterVec // kind
	slowConsumers     *prometheus.CounterVec // kind
	// revokedDisconnects counts live sessions closed because their
	// certificate or token was revoked.
	revokedDisconnects *prometheus.CounterVec // kind
	// oidcRefreshFailures counts failed fetches of the outside provider's
	// key set; oidc is the provider's verifier (nil: none), whose cached
	// keys a gauge counts.
	oidcRefreshFailures prometheus.Counter
	oidc                atomic.Pointer[oidc.Verifier]
}

func newMetrics(info func() *mqtt.Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vitalgate_cloud_connections", Help: "Authenticated connections by kind (gateway, app).",
		}, []string{"kind"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalgate_cloud_auth_failures_total", Help: "Refused TLS handshakes and CONNECTs by kind and reason.",
		}, []string{"kind", "reason"}),
		aclDenied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalgate_cloud_acl_denied_total", Help: "Refused publishes and subscriptions by kind and action.",
		}, []string{"kind", "action"}),
	}
	m.deliveriesDropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vitalgate_cloud_deliveries_dropped_total", Help: "Messages dropped for a client that does not keep up (its session at max_inflight, or its write queue full for QoS 0), by kind.",
	}, []string{"kind"})
	m.slowConsumers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vitalgate_cloud_slow_consumers_total", Help: "Clients disconnected because a write to them made no progress within the write timeout, by kind.",
	}, []string{"kind"})
	m.revokedDisconnects = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vitalgate_cloud_revoked_disconnects_total", Help: "Live sessions closed because gateway-crl.pem revoked the gateway's certificate or revoked-tokens the app's token, by kind.",
	}, []string{"kind"})
	m.oidcRefreshFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "vitalgate_cloud_oidc_jwks_failures_total", Help: "Failed fetches of the OpenID Connect provider's key set (the keys fetched before stay in use).",
	})
	oidcKeys := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "vitalgate_cloud_oidc_jwks_keys", Help: "Keys of the OpenID Connect provider's key set held (0 without a provider).",
	}, func() float64 {
		if v := m.oidc.Load(); v != nil {
			return float64(v.Keys())
		}
		return 0
	})
	for _, k := range []string{kindGateway, kindApp} {
		m.revokedDisconnects.WithLabelValues(k)
		m.connections.WithLabelValues(k)
		m.deliveriesDropped.WithLabelValues(k)
		m.slowConsumers.WithLabelValues(k)
	}
	stat := func(f func(s *mqtt.Server) int64) func() float64 {
		return func() float64 {
			s := info()
			if s == nil {
				return 0
			}
			return float64(f(s))
		}
	}
	m.reg.MustRegister(version.Collector(), m.connections, m.authFailures, m.aclDenied, m.deliveriesDropped, m.slowConsumers, m.revokedDisconnects,
		m.oidcRefreshFailures, oidcKeys,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "vitalgate_cloud_messages_in_total", Help: "PUBLISH packets received from clients.",
		}, stat(func(s *mqtt.Server) int64 { return atomic.LoadInt64(&s.Info.MessagesReceived) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "vitalgate_cloud_messages_out_total", Help: "PUBLISH packets sent to clients.",
		}, stat(func(s *mqtt.Server) int64 { return atomic.LoadInt64(&s.Info.MessagesSent) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "vitalgate_cloud_messages_dropped_total", Help: "Messages dropped because a client's write queue was full.",
		}, stat(func(s *mqtt.Server) int64 { return atomic.LoadInt64(&s.Info.MessagesDropped) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "vitalgate_cloud_inflight_dropped_total", Help: "QoS 1 messages dropped because a session's queue was at max_inflight.",
		}, stat(func(s *mqtt.Server) int64 { return atomic.LoadInt64(&s.Info.InflightDropped) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "vitalgate_cloud_retained", Help: "Retained messages held.",
		}, stat(func(s *mqtt.Server) int64 { return atomic.LoadInt64(&s.Info.Retained) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "vitalgate_cloud_inflight", Help: "QoS 1 messages in flight or queued for sessions.",
		}, stat(func(s *mqtt.Server) int64 { return atomic.LoadInt64(&s.Info.Inflight) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "vitalgate_cloud_subscriptions", Help: "Subscriptions held.",
		}, stat(func(s *mqtt.Server) int64 { return atomic.LoadInt64(&s.Info.Subscriptions) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "vitalgate_cloud_clients_connected", Help: "Connected clients as mochi counts them.",
		}, stat(func(s *mqtt.Server) int64 { return atomic.LoadInt64(&s.Info.ClientsConnected) })),
	)
	return m
}
