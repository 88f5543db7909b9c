package firmware

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	fetches   *prometheus.CounterVec // outcome
	refreshes *prometheus.CounterVec // outcome
	fetched   prometheus.Counter
	served    prometheus.Counter
	requests  *prometheus.CounterVec // outcome
}

func newMetrics(reg prometheus.Registerer, c *cache) *metrics {
	m := &metrics{
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vitalgate_firmware_fetches_total",
			Help: "Firmware images asked of the store by outcome: fetched (downloaded and verified), cached, refused (TUF metadata, manifest or image failed a check), error."}, []string{"outcome"}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vitalgate_firmware_metadata_refreshes_total",
			Help: "Refreshes of the update repository's TUF metadata by outcome (ok, failed)."}, []string{"outcome"}),
		fetched: prometheus.NewCounter(prometheus.CounterOpts{Name: "vitalgate_firmware_bytes_fetched_total",
			Help: "Bytes downloaded from the update repository (metadata and targets)."}),
		served: prometheus.NewCounter(prometheus.CounterOpts{Name: "vitalgate_firmware_bytes_served_total",
			Help: "Bytes of firmware images sent to devices on GET /firmware/."}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vitalgate_firmware_requests_total",
			Help: "Device requests of GET /firmware/ by outcome (ok, denied, not_found)."}, []string{"outcome"}),
	}
	for _, o := range []string{"fetched", "cached", "refused", "error"} {
		m.fetches.WithLabelValues(o)
	}
	for _, o := range []string{"ok", "failed"} {
		m.refreshes.WithLabelValues(o)
	}
	for _, o := range []string{"ok", "denied", "not_found"} {
		m.requests.WithLabelValues(o)
	}
	if reg != nil {
		reg.MustRegister(m.fetches, m.refreshes, m.fetched, m.served, m.requests,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "vitalgate_firmware_cache_bytes",
				Help: "Bytes of firmware images in the gateway's cache (bounded by updates.cache_bytes)."},
				func() float64 { return float64(c.bytes()) }))
	}
	return m
}
