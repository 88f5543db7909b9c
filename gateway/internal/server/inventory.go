package server

import (
	"encoding/json"
	"net/http"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/gateway/internal/inventory"
	"github.com/vitalgate/vitalgate/internal/telemetry"
)

// newInventory builds the device inventory, kept in the data directory and
// published through the relay, with the min_firmware policy.
func (g *Gateway) newInventory() (err error) {
	g.inventory, err = inventory.New(inventory.Options{
		Site: g.site, GatewayID: g.id, File: filepath.Join(g.cfg.Data, inventory.File), Relay: g.relay,
		MinFirmware: g.cfg.MinFirmware, MaxDevices: g.cfg.Inventory.MaxDevices,
		// Once per device that falls below: never held back by the
		// device's event budget.
		Event: func(e audit.Event) { g.event(e, true) },
		Log:   g.log.With("component", "inventory"),
	})
	if err != nil {
		return err // "inventory: ..." or "read inventory PATH: ..."
	}
	g.OnStatus(func(dev string, st *telemetry.Status) {
		g.inventory.Status(dev, inventory.Report{Model: st.Model, FW: st.FW, FWSeq: st.FWSeq})
	})
	g.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "vitalgate_inventory_devices", Help: "Devices in the inventory."},
			func() float64 { n, _, _ := g.inventory.Counts(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "vitalgate_inventory_below_min", Help: "Devices whose reported firmware is below their model's min_firmware."},
			func() float64 { _, n, _ := g.inventory.Counts(); return float64(n) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "vitalgate_inventory_untracked_total", Help: "Connections, messages and reports of devices beyond inventory.max_devices, not kept."},
			func() float64 { _, _, n := g.inventory.Counts(); return float64(n) }),
	)
	return nil
}

// Inventory is the device inventory.
func (g *Gateway) Inventory() *inventory.Inventory { return g.inventory }

// serveDevices is GET /devices: the inventory as JSON, by device ID.
func (g *Gateway) serveDevices(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"site": g.site, "gw": g.id, "devices": g.inventory.List()})
}
