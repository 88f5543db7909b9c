package updrepo

import (
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/update"
)

// Serve serves the repository dir over HTTPS on a free loopback port with
// the broker's certificate of the PKI directory pkiDir: files only, as any
// static web server would, for a gateway's updates.url in a demo or a
// test. It returns the base URL and a function that stops the server.
func Serve(pkiDir, dir string, log *slog.Logger) (string, func(), error) {
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

// PublishTestImage publishes a random image of size bytes for model at
// version and seq into repo, signed with the keys of pkiDir (as
// [Publish]), its manifest valid for a week from now: the image a demo or
// a test scenario rolls out.
func PublishTestImage(pkiDir, repo, model, version string, seq uint64, size int, now time.Time) error {
	image := make([]byte, size)
	if _, err := rand.Read(image); err != nil {
		return err
	}
	m := &update.Manifest{V: 1, Vendor: "VitalGate", Model: model, Version: version, Seq: seq,
		NotAfter: now.Add(7 * 24 * time.Hour).UnixMilli()}
	if _, err := Publish(pkiDir, repo, m, image, now); err != nil {
		return fmt.Errorf("publish %s %s: %w", model, version, err)
	}
	return nil
}
