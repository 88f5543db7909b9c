package firmware

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
)

// Prefix is the path of the firmware route: GET /firmware/{sha256-hex}.
const Prefix = "/firmware/"

// EventDenied is the security event verdict of a refused firmware request.
const EventDenied = "update_denied"

// Route serves the cached images to devices: GET /firmware/{sha256-hex}, Range requests answered (an
// interrupted download resumes). Each request must come from a device (its operational certificate, not
// revoked: Device) that a job targets with that image (Allowed); any refusal is a 403 or 404 and an
// update_denied security event.
type Route struct {
	Store *Store
	// Device authenticates the client certificate and returns the device ID (est.Server.Device).
	Device func(*tls.ConnectionState) (string, error)
	// Allowed reports whether a job sends the image to the device; nil refuses every request.
	Allowed   func(deviceID, sha256hex string) bool
	Event     func(audit.Event)
	GatewayID string
}

// ServeHTTP answers one request.
func (rt *Route) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	dev, err := rt.Device(r.TLS)
	if err != nil {
		rt.refuse(w, r, "", http.StatusForbidden, "denied", err.Error())
		return
	}
	sha := strings.TrimPrefix(r.URL.Path, Prefix)
	if !validSHA(sha) {
		rt.refuse(w, r, dev, http.StatusNotFound, "not_found", fmt.Sprintf("device %s: %q is not a SHA-256 in lowercase hex", dev, sha))
		return
	}
	if rt.Allowed == nil || !rt.Allowed(dev, sha) {
		rt.refuse(w, r, dev, http.StatusForbidden, "denied", fmt.Sprintf("device %s: no update job sends it image %s", dev, sha))
		return
	}
	f, mod, err := rt.Store.Open(sha)
	if err != nil {
		why := "not in the gateway's cache"
		if !errors.Is(err, os.ErrNotExist) {
			why = "unreadable"
			rt.Store.o.Log.Error("firmware: open cached image", "sha256", sha, "error", err)
		}
		rt.refuse(w, r, dev, http.StatusNotFound, "not_found", fmt.Sprintf("device %s: image %s %s", dev, sha, why))
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	// A strong validator: If-Range on a resumed download is honoured only for the same image.
	w.Header().Set("ETag", `"`+sha+`"`)
	cw := &countingWriter{ResponseWriter: w}
	http.ServeContent(cw, r, "", mod, f)
	rt.Store.m.served.Add(float64(cw.n))
	rt.Store.m.requests.WithLabelValues("ok").Inc()
}

func (rt *Route) refuse(w http.ResponseWriter, r *http.Request, dev string, status int, outcome, detail string) {
	rt.Store.m.requests.WithLabelValues(outcome).Inc()
	if rt.Event != nil {
		rt.Event(audit.Event{V: 1, TS: time.Now().UnixMilli(), GW: rt.GatewayID, Dev: dev, Verdict: EventDenied,
			Detail: detail, Remote: r.RemoteAddr})
	}
	http.Error(w, detail, status)
}

// countingWriter counts the body bytes written.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}
