package bench

// ed25519Counts reads the gateway's EdDSA batcher counters: signatures
// checked in batches, batches, and all checks. All zero without a batcher
// (ed25519_batch off) or metrics.
func (r *run) ed25519Counts() (batched, batches, checks float64) {
	all, err := r.gw.scrape()
	if err != nil {
		return 0, 0, 0
	}
	batched = all[`vitalgate_gateway_ed25519_checks_total{path="batched"}`]
	batches = all[`vitalgate_gateway_ed25519_batches_total{result="passed"}`] + all[`vitalgate_gateway_ed25519_batches_total{result="failed"}`]
	checks = batched + all[`vitalgate_gateway_ed25519_checks_total{path="alone"}`] + all[`vitalgate_gateway_ed25519_checks_total{path="inline"}`]
	return batched, batches, checks
}

// setBatchFigures sets the result's batch figures of the peak from the
// counts before and after it.
func (r *run) setBatchFigures(b0, n0, c0, b1, n1, c1 float64) {
	if n1 > n0 {
		r.res.SigsPerBatch = round((b1-b0)/(n1-n0), 1)
	}
	if c1 > c0 {
		r.res.BatchedShare = round((b1-b0)/(c1-c0), 3)
	}
}
