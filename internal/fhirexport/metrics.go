package fhirexport

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the exporter's Prometheus metrics (docs/operations.md#metrics).
type metrics struct {
	exported  *prometheus.CounterVec
	noPatient prometheus.Counter
	retries   *prometheus.CounterVec
	// unpublished counts Bundles larger than Options.MaxPublish.
	unpublished prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		exported: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalgate_fhir_exported_total",
			Help: "Records the FHIR exporter finished with, by result: verified, unverified (exported), rejected, malformed (not exported), server_refused.",
		}, []string{"result"}),
		noPatient: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitalgate_fhir_no_patient_total",
			Help: "Records exported without a subject: their device is not in the site's patient map.",
		}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vitalgate_fhir_retries_total",
			Help: "Failed attempts of the FHIR exporter that it retried, by target: publish, server.",
		}, []string{"target"}),
		unpublished: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vitalgate_fhir_unpublished_total",
			Help: "Bundles not published on fhir/ because they exceed the broker's packet size (posted to the server when there is one).",
		}),
	}
	for _, c := range []prometheus.Collector{m.exported, m.noPatient, m.retries, m.unpublished} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("fhir exporter metrics: already registered (one exporter per registry)")
			}
			return nil, fmt.Errorf("fhir exporter metrics: %w", err)
		}
	}
	for _, r := range []string{resultVerified, resultUnverified, resultRejected, resultMalformed, resultRefused} {
		m.exported.WithLabelValues(r)
	}
	m.retries.WithLabelValues("publish")
	m.retries.WithLabelValues("server")
	return m, nil
}
