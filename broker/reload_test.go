package main

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/golang-jwt/jwt/v5"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// TestSIGHUPReloadsRevocation runs the broker program as systemd would and
// sends it the unit's ExecReload signal: the broker keeps running, reads the
// revocation lists, closes the connection of the token just revoked and
// still serves other apps; SIGTERM then stops it with exit status 0.
func TestSIGHUPReloadsRevocation(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "--pki", dir, "--listen", "127.0.0.1:0", "--apps", "127.0.0.1:0", "--ws", "",
		"--http", "", "--data", t.TempDir())
	cmd.Env = append(os.Environ(), "BROKER_TEST_MAIN=1", "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	var stderr syncBuf
	cmd.Stdout, cmd.Stderr = &syncBuf{}, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1) // Wait's answer, read by one of the selects below
	waited := make(chan struct{})
	go func() { exited <- cmd.Wait(); close(waited) }()
	defer func() {
		_ = cmd.Process.Kill()
		<-waited
	}()
	apps := regexp.MustCompile(`apps=(127\.0\.0\.1:[0-9]+)`)
	testutil.Eventually(t, 20*time.Second, "broker started", func() bool { return apps.MatchString(stderr.String()) })
	addr := apps.FindStringSubmatch(stderr.String())[1]

	caPEM, err := os.ReadFile(filepath.Join(dir, pki.FileCA))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	jtis := map[string]string{}
	connect := func(name string, lost chan<- struct{}) paho.Client {
		t.Helper()
		tok, err := pki.MintToken(dir, name, []string{"site1"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		var claims jwt.RegisteredClaims
		if _, _, err := jwt.NewParser().ParseUnverified(tok, &claims); err != nil {
			t.Fatal(err)
		}
		jtis[name] = claims.ID
		o := paho.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(name).SetUsername("app").SetPassword(tok).
			SetTLSConfig(tc).SetAutoReconnect(false).SetConnectionLostHandler(func(paho.Client, error) { close(lost) })
		c := paho.NewClient(o)
		if tk := c.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
			t.Fatalf("%s connect: %v", name, tk.Error())
		}
		return c
	}
	revokedLost, keptLost := make(chan struct{}), make(chan struct{})
	revoked := connect("nurse-revoked", revokedLost)
	kept := connect("nurse-kept", keptLost)
	defer kept.Disconnect(100)
	defer revoked.Disconnect(100)

	if err := pki.RevokeToken(dir, jtis["nurse-revoked"]); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	select {
	case <-revokedLost:
	case err := <-exited:
		t.Fatalf("the broker exited on SIGHUP: %v\n%s", err, stderr.String())
	case <-time.After(15 * time.Second):
		t.Fatal("the revoked token's connection stayed open after SIGHUP")
	}
	testutil.Eventually(t, 10*time.Second, "reload logged", func() bool {
		return strings.Contains(stderr.String(), "reloaded revocation lists")
	})
	select {
	case <-keptLost:
		t.Fatal("SIGHUP closed a connection whose token is not revoked")
	case err := <-exited:
		t.Fatalf("the broker exited after SIGHUP: %v\n%s", err, stderr.String())
	default:
	}
	if !kept.IsConnectionOpen() {
		t.Fatal("the other app was disconnected")
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the broker did not stop on SIGTERM")
	}
}
