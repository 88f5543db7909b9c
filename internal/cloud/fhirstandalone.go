package cloud

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vitalgate/vitalgate/internal/fhirexport"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/version"
)

// FHIRStandalone is the configuration file of `broker fhir --config FILE`:
// a FHIR exporter consuming any MQTT broker (Mosquitto, EMQX, NATS, or a
// VitalGate broker), with the `fhir:` block of the broker's own file.
type FHIRStandalone struct {
	// URL is the MQTT broker: ssl://, mqtts:// or wss://.
	URL string `yaml:"url"`
	// CA is ca.crt, the deployment's root: device certificate chains
	// published on certs/{site}/{device} are checked against it, and so is
	// the broker's TLS certificate unless BrokerCA is set.
	CA string `yaml:"ca"`
	// PKI is the PKI directory, in place of CA: records of a device with
	// no published chain are then checked with devices/{id}.crt, and
	// crl.pem (with issuing-crl.pem) revokes device certificates.
	PKI string `yaml:"pki"`
	// BrokerCA is the CA file of the broker's TLS certificate when it is
	// not the deployment's ca.crt.
	BrokerCA string `yaml:"broker_ca"`
	// Cert and Key are a client certificate, for a broker that wants one.
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// Username and TokenFile (the password, read once) for a broker that
	// wants them; at a VitalGate broker the password is an app token.
	Username  string `yaml:"username"`
	TokenFile string `yaml:"token_file"`
	// ClientID is the exporter's fixed MQTT client ID: its persistent
	// session is the exporter's position. Each exporter of a group needs
	// its own.
	ClientID string `yaml:"client_id"`
	// HTTP serves /metrics and /healthz. Empty: off.
	HTTP string `yaml:"http"`
	// LogLevel: debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// MaxPacket is the broker's maximum packet size, when it has one: a
	// Bundle that would not fit is not published on fhir/ (the broker
	// would refuse it, again and again), only posted to the server.
	// 0: no bound.
	MaxPacket int `yaml:"max_packet"`
	// FHIR is what is exported and where (enabled is implied).
	FHIR fhirexport.Config `yaml:"fhir"`
}

// DefaultFHIRStandalone is the configuration before the file.
func DefaultFHIRStandalone() FHIRStandalone {
	f := fhirexport.Default()
	f.Enabled = true
	return FHIRStandalone{URL: "ssl://127.0.0.1:8884", ClientID: "vitalgate-fhir-exporter", LogLevel: "info", FHIR: f}
}

// Validate reports every problem of c at once, each naming its key.
func (c FHIRStandalone) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if u, err := url.Parse(c.URL); err != nil || !(u.Scheme == "ssl" || u.Scheme == "mqtts" || u.Scheme == "wss") || u.Host == "" {
		bad("url", "%q is not an ssl://, mqtts:// or wss:// URL", c.URL)
	}
	if (c.CA == "") == (c.PKI == "") {
		bad("ca", "exactly one of ca and pki is required")
	}
	if (c.Cert == "") != (c.Key == "") {
		bad("cert", "cert and key go together")
	}
	if c.ClientID == "" || len(c.ClientID) > 128 {
		bad("client_id", "required, at most 128 bytes")
	} else if c.FHIR.Publish && strings.ContainsAny(c.ClientID, "/+#") {
		bad("client_id", "%q: with publish, the exporter's security events go to security/{site}/{client_id}: no /, + or #", c.ClientID)
	}
	if c.HTTP != "" {
		if _, _, err := net.SplitHostPort(c.HTTP); err != nil {
			bad("http", "%q is not host:port", c.HTTP)
		}
	}
	if c.MaxPacket != 0 && (c.MaxPacket < 4<<10 || c.MaxPacket > 268435455) {
		bad("max_packet", "%d outside 4096..268435455 (0: no bound)", c.MaxPacket)
	}
	if err := new(slog.Level).UnmarshalText([]byte(c.LogLevel)); err != nil {
		bad("log_level", "%q: want debug, info, warn or error", c.LogLevel)
	}
	f := c.FHIR
	f.Enabled = true
	if err := f.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// NewFHIR checks c and reads every file it names (certificates, keys,
// tokens, the FHIR server's CA), then returns the standalone exporter's
// run function: it serves c.HTTP and exports until ctx is done.
func NewFHIR(c FHIRStandalone, log *slog.Logger) (run func(ctx context.Context) error, err error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	conn, w, err := standaloneConn(c)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(version.Collector(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	c.FHIR.Enabled = true
	opts := fhirexport.Options{Conn: conn, Checker: FHIRChecker(w), Log: log, Registerer: reg}
	if c.MaxPacket > 0 {
		opts.MaxPublish = c.MaxPacket - fhirexport.PublishOverhead
	}
	e, err := fhirexport.New(c.FHIR, opts)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		if c.HTTP != "" {
			stop, err := serveMetrics(c.HTTP, reg, log)
			if err != nil {
				return err
			}
			defer stop()
		}
		w.WatchRevocations(ctx)
		return e.Run(ctx)
	}, nil
}

// standaloneConn is the connection and the watcher of c.
func standaloneConn(c FHIRStandalone) (fhirexport.Conn, *Watcher, error) {
	var w *Watcher
	var err error
	caFile := c.CA
	if c.PKI != "" {
		caFile = filepath.Join(c.PKI, pki.FileCA)
		w, err = NewFHIRWatcher(c.PKI)
	} else {
		w, err = NewChainWatcher(c.CA, 1)
	}
	if err != nil {
		return fhirexport.Conn{}, nil, err
	}
	if c.BrokerCA != "" {
		caFile = c.BrokerCA
	}
	tc, err := pki.ClientTLS(caFile, c.Cert, c.Key)
	if err != nil {
		return fhirexport.Conn{}, nil, err
	}
	conn := fhirexport.Conn{URL: c.URL, TLS: tc, Username: c.Username, ClientID: c.ClientID}
	if c.TokenFile != "" {
		b, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return fhirexport.Conn{}, nil, fmt.Errorf("token_file: %w", err)
		}
		conn.Password = strings.TrimSpace(string(b))
		if conn.Username == "" {
			conn.Username = "app"
		}
	}
	return conn, w, nil
}

// serveMetrics serves /metrics and /healthz on addr until stop.
func serveMetrics(addr string, reg *prometheus.Registry, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for http on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server failed", "error", err)
		}
	}()
	log.Info("metrics", "http", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}
