package firmware

import (
	"context"
	"crypto/tls"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// pyServer is Python's http.server behind Python's ssl, requiring a client certificate of the CA file argv[4].
// (openssl s_server -WWW cannot host a TUF repository: it answers a missing file with 200 and an error text,
// where the client must see a 404 on the next root version.)
const pyServer = `import http.server, ssl, sys
host, port = sys.argv[1].rsplit(":", 1)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.minimum_version = ssl.TLSVersion.TLSv1_2
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(sys.argv[4])
ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # trust the gateway CA alone, not its root
srv = http.server.ThreadingHTTPServer((host, int(port)), http.server.SimpleHTTPRequestHandler)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
`

// TestAnyStaticHost: the gateway fetches from Python's http.server serving the repository directory over
// TLS, with the broker's certificate and the gateway's client certificate required: no Go and no VitalGate
// code on the server.
func TestAnyStaticHost(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
	r := newRepo(t)
	img := image(200<<10, 5)
	r.release("m", "2.0.0", img)
	addr := freePort(t)
	cmd := exec.Command("python3", "-c", pyServer, addr, filepath.Join(r.pki, pki.FileBroker),
		filepath.Join(r.pki, pki.FileBrokerKey), filepath.Join(r.pki, pki.FileGatewayCA))
	cmd.Dir = r.dir
	check(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	testutil.Eventually(t, 10*time.Second, "python3 http.server listening", func() bool {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	s := r.store("https://"+addr, t.TempDir())
	got, err := s.Fetch(context.Background(), "m", "2.0.0")
	check(t, err)
	if got.Size != int64(len(img)) || s.cache.bytes() != int64(len(img)) {
		t.Fatalf("fetched %d bytes, cached %d, want %d", got.Size, s.cache.bytes(), len(img))
	}
}
