// Package mqttlog keeps patient data and credentials out of the log lines of
// the mochi MQTT server.
package mqttlog

import (
	"context"
	"log/slog"
	"slices"
)

// Handler passes mochi's log records on without the packets mochi attaches
// to some of them (attributes "pk" and "packet"): a PUBLISH carries patient
// data, a CONNECT an app's token, and mochi logs whole packets, for example
// on a second CONNECT or a refused publish. Records whose message is in Drop
// are not logged at all.
type Handler struct {
	slog.Handler
	Drop []string
}

// Handle implements [slog.Handler].
func (h Handler) Handle(ctx context.Context, r slog.Record) error {
	if slices.Contains(h.Drop, r.Message) {
		return nil
	}
	clean := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "pk" && a.Key != "packet" {
			clean.AddAttrs(a)
		}
		return true
	})
	return h.Handler.Handle(ctx, clean)
}

// WithAttrs implements [slog.Handler].
func (h Handler) WithAttrs(a []slog.Attr) slog.Handler {
	return Handler{h.Handler.WithAttrs(a), h.Drop}
}

// WithGroup implements [slog.Handler].
func (h Handler) WithGroup(n string) slog.Handler {
	return Handler{h.Handler.WithGroup(n), h.Drop}
}
