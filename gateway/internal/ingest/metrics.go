package ingest

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vitalgate/vitalgate/internal/verdict"
)

// Metrics are the device side's Prometheus series.
type Metrics struct {
	Accepted    prometheus.Counter
	Rejected    *prometheus.CounterVec // by verdict
	Quarantines prometheus.Counter
	Duplicates  prometheus.Counter // resends of the last accepted message, acknowledged again
	Connections prometheus.Gauge
	Handshakes  *prometheus.CounterVec // by result: ok, failed, refused
	Latency     prometheus.Histogram   // PUBLISH received to verdict (enqueue included)
	// ClockUntrusted counts records stored, unjudged and marked, while the
	// gateway's clock was untrusted.
	ClockUntrusted prometheus.Counter
}

// NewMetrics creates the series and registers them on reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitalgate_gateway_accepted_total", Help: "Messages stored in the queue and acknowledged."}),
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalgate_gateway_rejected_total", Help: "Messages rejected, by verdict."}, []string{"verdict"}),
		Quarantines: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitalgate_gateway_quarantines_total", Help: "Devices quarantined after repeated violations."}),
		Duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitalgate_gateway_duplicates_total", Help: "Resends of a device's last accepted message (lost PUBACK), acknowledged without storing again."}),
		Connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vitalgate_gateway_connections", Help: "Authenticated device connections."}),
		Handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalgate_gateway_handshakes_total", Help: "Device TLS handshakes by result (ok, failed, refused at capacity)."}, []string{"result"}),
		Latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "vitalgate_gateway_publish_seconds", Help: "Time from a PUBLISH read to its verdict, durable enqueue included.",
			Buckets: LatencyBuckets}),
		ClockUntrusted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitalgate_clock_untrusted_records_total", Help: "Records stored while the gateway's clock was untrusted: their time was not judged, their cloud messages carry clock_untrusted."}),
	}
	for _, v := range verdict.Rejections() {
		m.Rejected.WithLabelValues(string(v))
	}
	for _, r := range []string{"ok", "failed", "refused"} {
		m.Handshakes.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.Accepted, m.Rejected, m.Quarantines, m.Duplicates, m.Connections, m.Handshakes, m.Latency, m.ClockUntrusted)
	}
	return m
}

// LatencyBuckets are the bounds, in seconds, of the gateway's latency
// histograms: 100 µs to 1 s.
var LatencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1}
