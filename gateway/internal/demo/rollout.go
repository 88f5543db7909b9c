package demo

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	mqtt3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// The demo's firmware rollout: at start, a signed test image of the
// oximeters' model in an update repository under the demo directory,
// served over HTTPS as any static host would; once the fleet runs, an
// operator at the cloud starts a rollout of it in three waves.
const (
	RolloutJob     = "demo-oxi-fw"
	RolloutVersion = "1.1.0"
	imageSize      = 64 << 10
)

// RolloutWaves are the demo rollout's waves, cumulative percentages.
var RolloutWaves = []int{10, 50, 100}

// startRepoServer serves the update repository dir over HTTPS with the
// broker's certificate: files only, as any static web server would. It
// returns the base URL and a function that stops the server.
func startRepoServer(pkiDir, dir string, log *slog.Logger) (string, func(), error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(pkiDir, pki.FileBroker), filepath.Join(pkiDir, pki.FileBrokerKey))
	if err != nil {
		return "", nil, fmt.Errorf("update repository server: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", nil, fmt.Errorf("update repository server: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		root.Close()
		return "", nil, fmt.Errorf("update repository server: %w", err)
	}
	files := http.FileServerFS(root.FS())
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if len(r.URL.Path) > 0 && r.URL.Path[len(r.URL.Path)-1] == '/' {
				http.NotFound(w, r) // no directory listings
				return
			}
			files.ServeHTTP(w, r)
		})}
	tl := tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	go func() {
		if err := srv.Serve(tl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("update repository server", "error", err)
		}
	}()
	stop := func() { srv.Close(); root.Close() }
	return "https://" + ln.Addr().String(), stop, nil
}

// rolloutJob is the job the demo's operator publishes.
type rolloutJob struct {
	V             int     `json:"v"`
	Job           string  `json:"job"`
	Model         string  `json:"model"`
	Version       string  `json:"version"`
	Waves         []int   `json:"waves"`
	AbortFailures float64 `json:"abort_failures"`
	Deadline      int64   `json:"deadline"`
}

// startRollout waits until after, then publishes the demo's rollout as an
// operator at the cloud's apps listener: every oximeter of the site, in
// RolloutWaves, aborted when a fifth of the devices tried fail.
func startRollout(ctx context.Context, res *Result, site, model string, after time.Duration, log *slog.Logger) error {
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(after):
	}
	tok, err := operatorToken(res.PKI, site)
	if err != nil {
		return fmt.Errorf("operator token: %w", err)
	}
	tc, err := pki.ClientTLS(filepath.Join(res.PKI, pki.FileCA), "", "")
	if err != nil {
		return fmt.Errorf("operator TLS: %w", err)
	}
	tc.ServerName = "localhost"
	o := mqtt3.NewClientOptions().AddBroker("ssl://" + res.AppsAddr).SetClientID("demo-operator").
		SetUsername("demo-operator").SetPassword(tok).SetTLSConfig(tc).SetCleanSession(true).
		SetAutoReconnect(false).SetConnectRetry(false)
	c := mqtt3.NewClient(o)
	if t := c.Connect(); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		return fmt.Errorf("operator: connect to %s: %v", res.AppsAddr, t.Error())
	}
	defer c.Disconnect(250)
	job, _ := json.Marshal(rolloutJob{V: 1, Job: RolloutJob, Model: model, Version: RolloutVersion, Waves: RolloutWaves,
		AbortFailures: 0.2, Deadline: time.Now().Add(time.Hour).UnixMilli()})
	t := c.Publish("jobs/"+site+"/"+RolloutJob, 1, true, job)
	if !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		return fmt.Errorf("operator: publish the job: %v", t.Error())
	}
	log.Info("rollout published", "job", RolloutJob, "model", model, "version", RolloutVersion)
	return nil
}

// operatorToken mints the demo operator's app token for site.
func operatorToken(pkiDir, site string) (string, error) {
	return pki.MintRoleToken(pkiDir, "demo-operator", pki.RoleOperator, []string{site}, 24*time.Hour)
}
