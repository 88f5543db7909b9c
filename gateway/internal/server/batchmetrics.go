package server

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vitalgate/vitalgate/internal/batchverify"
)

// registerBatchMetrics exposes what the EdDSA batcher did, when there is one:
// checks by path and batches by result.
func (g *Gateway) registerBatchMetrics() {
	b := g.batcher
	if b == nil {
		return
	}
	checks := prometheus.CounterOpts{Name: "vitalgate_gateway_ed25519_checks_total",
		Help: "EdDSA signature checks by path: batched (in a batch of two or more), alone (nothing else pending), inline (queue full or closed, or a signature of the wrong size)."}
	batches := prometheus.CounterOpts{Name: "vitalgate_gateway_ed25519_batches_total",
		Help: "EdDSA batches: passed, or failed (a bad entry: each entry then checked alone)."}
	counter := func(opts prometheus.CounterOpts, label, value string, f func(batchverify.Stats) uint64) {
		opts.ConstLabels = prometheus.Labels{label: value}
		g.reg.MustRegister(prometheus.NewCounterFunc(opts, func() float64 { return float64(f(b.Stats())) }))
	}
	counter(checks, "path", "batched", func(s batchverify.Stats) uint64 { return s.Batched })
	counter(checks, "path", "alone", func(s batchverify.Stats) uint64 { return s.Alone })
	counter(checks, "path", "inline", func(s batchverify.Stats) uint64 { return s.Inline })
	counter(batches, "result", "passed", func(s batchverify.Stats) uint64 { return s.Passed })
	counter(batches, "result", "failed", func(s batchverify.Stats) uint64 { return s.Failed })
}
