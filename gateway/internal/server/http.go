package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vitalgate/vitalgate/internal/fileerr"
)

// notReady lists why the gateway cannot take devices' messages now, or
// nothing if it can.
func (g *Gateway) notReady() []string {
	var why []string
	if g.closing.Load() {
		why = append(why, "shutting down")
	}
	if g.queue.Len() >= g.cfg.Queue.MaxRecords || g.queue.Bytes() >= g.cfg.Queue.MaxBytes {
		why = append(why, "queue: full")
	}
	if e := g.hook.StoreError(); e != nil {
		why = append(why, fmt.Sprintf("queue: %s (failing since %s)", fileerr.Cause(e.Err), e.Since.UTC().Format(time.RFC3339)))
	}
	if err := g.audit.Err(); err != nil {
		why = append(why, "audit: "+fileerr.Cause(err)+" (security events are not being recorded)")
	}
	return why
}

func (g *Gateway) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		// Alive, and what an operator should know at a glance: a clock
		// that cannot judge records' time does not stop the gateway.
		if st := g.clock.State(); !st.Trusted {
			fmt.Fprintf(w, "ok\nclock untrusted: %s\n", st.Reason)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		// Ready means devices' messages can be taken and audited:
		// store-and-forward does not need the cloud, but it needs a queue
		// that stores and an audit log that writes.
		why := g.notReady()
		full := g.queue.Len() >= g.cfg.Queue.MaxRecords || g.queue.Bytes() >= g.cfg.Queue.MaxBytes
		state := map[string]any{"ready": len(why) == 0, "reasons": append([]string{}, why...),
			"queue": g.queue.Len(), "queue_full": full, "cloud_connected": g.relay.Connected(),
			"clock": g.clockState()}
		w.Header().Set("Content-Type", "application/json")
		if len(why) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		json.NewEncoder(w).Encode(state)
	})
	mux.HandleFunc("GET /audit", func(w http.ResponseWriter, r *http.Request) {
		// A fresh audit (at most one a second, however many ask): its new
		// findings are security events like the periodic run's.
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(g.auditor.Fresh(time.Second))
	})
	mux.HandleFunc("GET /devices", g.serveDevices)
	if g.cfg.Pprof {
		// Profiles reveal the process's internals (no secrets: handlers are
		// not given request data); the http address should stay on loopback.
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}
