package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/vitalgate/vitalgate/gateway/internal/audit"
	"github.com/vitalgate/vitalgate/gateway/internal/est"
	"github.com/vitalgate/vitalgate/gateway/internal/firmware"
)

// listenEnroll binds the HTTPS address of enrolment over EST, if one is
// configured, served with the gateway's TLS certificate.
func (g *Gateway) listenEnroll() error {
	if g.cfg.HTTPS == "" {
		return nil
	}
	s, err := est.New(est.Options{PKI: g.cfg.PKI, Data: g.cfg.Data, CA: g.files.issuing,
		Validity: g.cfg.Enroll.Validity, Rate: g.cfg.Enroll.Rate, Burst: g.cfg.Enroll.Burst,
		Revoked: g.files.revoked, Event: func(e audit.Event) { g.event(e, false) }, GatewayID: g.id,
		Log: g.log.With("component", "est"), Metrics: g.reg})
	if err != nil {
		return fmt.Errorf("enrolment: %w", err)
	}
	tc, err := est.ServerTLS(g.cfg.PKI)
	if err != nil {
		return fmt.Errorf("enrolment listener TLS: %w", err)
	}
	ln, err := net.Listen("tcp", g.cfg.HTTPS)
	if err != nil {
		return fmt.Errorf("enrolment listener: %w", err) // "listen tcp ADDR: ..."
	}
	g.httpsLn = tls.NewListener(ln, tc)
	mux := http.NewServeMux()
	mux.Handle(est.Prefix, s)
	if g.firmware != nil {
		mux.Handle("GET "+firmware.Prefix, g.firmwareRoute(s))
	}
	write := 30 * time.Second
	if g.firmware != nil {
		write = 10 * time.Minute // an image over a slow home uplink; a cut download resumes with Range
	}
	g.https = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: write, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10}
	return nil
}

// serveEnroll serves EST until Close.
func (g *Gateway) serveEnroll() {
	if g.https == nil {
		return
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := g.https.Serve(g.httpsLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.log.Error("https server", "error", err)
		}
	}()
}

// closeEnroll stops the EST listener.
func (g *Gateway) closeEnroll() error {
	if g.https == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := g.https.Shutdown(ctx)
	_ = g.httpsLn.Close() // not served if Start never ran
	return err
}

// HTTPSAddr is the bound EST address, or "".
func (g *Gateway) HTTPSAddr() string {
	if g.httpsLn == nil {
		return ""
	}
	return g.httpsLn.Addr().String()
}

// refreshIssuingCRL re-signs issuing-crl.pem when under half of its
// validity remains (a failure is logged and retried at the next call).
func (g *Gateway) refreshIssuingCRL() {
	did, err := g.files.issuing.RefreshCRL(time.Now())
	switch {
	case err != nil:
		g.log.Error("re-sign the issuing CA's revocation list", "error", err)
	case did:
		g.log.Info("issuing CA's revocation list re-signed")
	}
}
