package relay

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	connectedG                                prometheus.Gauge
	publishedC, ackedC, reconnectsC, droppedC prometheus.Counter
	retainDroppedC                            prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (metrics, error) {
	var m metrics
	m.connectedG = prometheus.NewGauge(prometheus.GaugeOpts{Name: "vitalgate_relay_connected",
		Help: "1 while the relay is connected to the cloud broker."})
	m.publishedC = prometheus.NewCounter(prometheus.CounterOpts{Name: "vitalgate_relay_published_total",
		Help: "Telemetry messages published to the cloud, resends included."})
	m.ackedC = prometheus.NewCounter(prometheus.CounterOpts{Name: "vitalgate_relay_acked_total",
		Help: "Telemetry messages acknowledged by the cloud (PUBACK)."})
	m.reconnectsC = prometheus.NewCounter(prometheus.CounterOpts{Name: "vitalgate_relay_reconnects_total",
		Help: "Connections to the cloud established after the first one."})
	m.droppedC = prometheus.NewCounter(prometheus.CounterOpts{Name: "vitalgate_relay_events_dropped_total",
		Help: "Security events dropped because the event buffer was full (they remain in the audit log)."})
	m.retainDroppedC = prometheus.NewCounter(prometheus.CounterOpts{Name: "vitalgate_relay_retained_dropped_total",
		Help: "Retained messages (device certificate chains) dropped because the retained buffer was full; each is queued again at the device's next connection."})
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.connectedG, m.publishedC, m.ackedC, m.reconnectsC, m.droppedC, m.retainDroppedC} {
		if err := reg.Register(c); err != nil {
			return m, fmt.Errorf("relay: register metrics: %w", err)
		}
	}
	return m, nil
}
