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
	counter := func(name, help, label, value string, f func(batchverify.Stats) uint64) {
		g.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help,
			ConstLabels: prometheus.Labels{label: value}}, func() float64 { return float64(f(b.Stats())) }))
	}
	const checks = "EdDSA signature checks by path: batched (in a batch of two or more), alone (nothing else pending), inline (queue full or closed, or a signature of the wrong size)."
	counter("vitalgate_gateway_ed25519_checks_total", checks, "path", "batched", func(s batchverify.Stats) uint64 { return s.Batched })
	counter("vitalgate_gateway_ed25519_checks_total", checks, "path", "alone", func(s batchverify.Stats) uint64 { return s.Alone })
	counter("vitalgate_gateway_ed25519_checks_total", checks, "path", "inline", func(s batchverify.Stats) uint64 { return s.Inline })
	const batches = "EdDSA batches: passed, or failed (a bad entry: each entry then checked alone)."
	counter("vitalgate_gateway_ed25519_batches_total", batches, "result", "passed", func(s batchverify.Stats) uint64 { return s.Batches - s.Failed })
	counter("vitalgate_gateway_ed25519_batches_total", batches, "result", "failed", func(s batchverify.Stats) uint64 { return s.Failed })
}
