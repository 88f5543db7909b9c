package server

import (
	"sync"

	"github.com/vitalgate/vitalgate/internal/telemetry"
)

// statusSinks are the receivers of devices' status records (the parts that
// follow firmware and update jobs), in the order they were added.
type statusSinks struct {
	mu    sync.RWMutex
	sinks []func(dev string, st *telemetry.Status)
}

// OnStatus adds f to the receivers of every accepted status record
// (devices/{id}/status): ingest has checked its signature, identity,
// replay window, time and values, and committed its seq. f runs on the
// message path before the device's PUBACK: it must be cheap and never
// block. Status records are never relayed as telemetry.
func (g *Gateway) OnStatus(f func(dev string, st *telemetry.Status)) {
	g.statusSinks.mu.Lock()
	g.statusSinks.sinks = append(g.statusSinks.sinks, f)
	g.statusSinks.mu.Unlock()
}

// status hands an accepted status record to every receiver.
func (g *Gateway) status(dev string, st *telemetry.Status) {
	g.statusSinks.mu.RLock()
	defer g.statusSinks.mu.RUnlock()
	for _, f := range g.statusSinks.sinks {
		f(dev, st)
	}
}
