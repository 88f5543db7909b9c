package server

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// installer runs shell commands in a directory, as an installer types them.
type installer struct {
	t   *testing.T
	dir string
}

func (in installer) run(script string) string {
	in.t.Helper()
	cmd := exec.Command("sh", "-ec", script)
	cmd.Dir = in.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		in.t.Fatalf("%s\n%v\n%s", script, err, out)
	}
	return string(out)
}

// TestEnrollWithOpenSSLAndCurl enrols a device exactly as the operations guide tells an installer (openssl req,
// curl, openssl pkcs7), connects the new certificate to the MQTT listener, publishes a signed record that is
// accepted, and then revokes the certificate in issuing-crl.pem: the live session is closed and the certificate
// refused at the next handshake.
func TestEnrollWithOpenSSLAndCurl(t *testing.T) {
	for _, tool := range []string{"openssl", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	e := newEnv(t, nil)
	// The factory identity arrives after the start: the allow-list and manufacturers/ are reloaded.
	if _, err := pki.IssueFactory(e.pki, pki.FactoryOptions{Count: 1}); err != nil {
		t.Fatal(err)
	}
	in := installer{t, t.TempDir()}
	url := "https://" + e.gw.HTTPSAddr() + "/.well-known/est/"
	ca := filepath.Join(e.pki, pki.FileCA)
	fcrt, fkey := pki.FactoryPaths(e.pki, "dev-00001")

	cacerts := in.run("curl -sS --fail --cacert " + ca + " " + url + "cacerts | openssl base64 -d | openssl pkcs7 -inform DER -print_certs")
	if !strings.Contains(cacerts, "VitalGate Issuing CA gw1") || !strings.Contains(cacerts, "VitalGate Device CA") {
		t.Fatalf("cacerts through curl and openssl:\n%s", cacerts)
	}
	in.run("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout dev.key -subj /CN=dev-00001 -outform DER | base64 > dev.b64")
	in.run("curl -sS --fail --cacert " + ca + " --cert " + fcrt + " --key " + fkey +
		" -H 'Content-Type: application/pkcs10' --data-binary @dev.b64 " + url + "simpleenroll -o dev.p7")
	in.run("openssl base64 -d -in dev.p7 | openssl pkcs7 -inform DER -print_certs -out dev.crt")

	tc, err := pki.ClientTLS(ca, "", "")
	if err != nil {
		t.Fatal(err)
	}
	tc.ServerName = "localhost"
	pair, err := tls.LoadX509KeyPair(filepath.Join(in.dir, "dev.crt"), filepath.Join(in.dir, "dev.key"))
	if err != nil {
		t.Fatal(err)
	}
	tc.Certificates = []tls.Certificate{pair}
	c, _, err := e.dialTLS(e.gw.DeviceAddr(), tc, "dev-00001", "dev-00001")
	if err != nil {
		t.Fatalf("enrolled certificate refused by the device listener: %v", err)
	}
	if rc := publish5(t, c, telemetryTopic("dev-00001"), e.signWith(filepath.Join(in.dir, "dev.key"), "dev-00001", spo2("dev-00001", 1))); rc != 0 {
		t.Fatalf("record of the enrolled device: PUBACK 0x%02x, want accepted", rc)
	}
	if n, err := promtest.GatherAndCount(e.gw.Registry(), "vitalgate_est_requests_total"); err != nil || n != 2 {
		t.Errorf("vitalgate_est_requests_total: %d series (%v), want cacerts and simpleenroll", n, err)
	}

	revokeIssued(t, e.pki, pair.Leaf)
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("session of a device revoked in issuing-crl.pem still open after 10 s")
	}
	testutil.Eventually(t, 5*time.Second, "revoked certificate refused", func() bool {
		_, _, err := e.dialTLS(e.gw.DeviceAddr(), tc, "dev-00001", "dev-00001")
		return err != nil
	})
}

// revokeIssued lists cert in issuing-crl.pem, signed by the issuing CA.
func revokeIssued(t *testing.T, dir string, cert *x509.Certificate) {
	t.Helper()
	ca, err := pki.LoadCert(filepath.Join(dir, pki.FileIssuingCA))
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.LoadKey(filepath.Join(dir, pki.FileIssuingCAKey))
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(2),
		ThisUpdate: time.Now(), NextUpdate: time.Now().Add(pki.IssuingCRLValidity),
		RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: cert.SerialNumber, RevocationTime: time.Now()}}}, ca, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, pki.FileIssuingCRL)
	if err := os.WriteFile(path+".new", pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}
