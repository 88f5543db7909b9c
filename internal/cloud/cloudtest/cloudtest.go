// Package cloudtest starts outside MQTT brokers for tests: Mosquitto and NATS
// server with MQTT (single node or a cluster), configured with the broker
// identity of a PKI directory (docs/design.md#the-pki-directory) and requiring client
// certificates from the gateway CA. Any 3.1.1 broker must serve as the cloud
// (docs/design.md#trust); these are the two the gateway is tested against.
//
// Each Start function skips the test when the program is not installed.
package cloudtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// Find returns the path of an installed program (also looking in /usr/sbin,
// where Debian puts mosquitto and nats-server), or "".
func Find(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/usr/local/sbin", "/usr/local/bin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	return ""
}

// FreePort returns a loopback address with a port that was free a moment ago
// (outside programs need the port in their config file).
func FreePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// ClientCABundle writes ca.crt + gateway-ca.crt into one file: outside
// brokers verify gateway client certificates (which carry no chain) with it.
// device-ca.crt is left out, so device certificates are refused.
func ClientCABundle(t testing.TB, dir string) string {
	t.Helper()
	var b []byte
	for _, f := range []string{pki.FileCA, pki.FileGatewayCA} {
		c, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, c...)
	}
	p := filepath.Join(t.TempDir(), "client-cas.pem")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Proc is an outside broker process.
type Proc struct {
	Name string
	Addr string // the MQTT over TLS address
	cmd  *exec.Cmd
	out  *syncBuf
	mu   sync.Mutex
	done chan struct{}
}

// URL is the MQTT URL of the process (ssl://host:port).
func (p *Proc) URL() string { return "ssl://" + p.Addr }

// Output is what the process logged so far.
func (p *Proc) Output() string { return p.out.String() }

// Stop kills the process (SIGKILL: an abrupt node loss) and waits for it.
func (p *Proc) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

func start(t testing.TB, name, bin string, args []string, mqttAddr string, tc *tls.Config) *Proc {
	t.Helper()
	p := startNoWait(t, name, bin, args, mqttAddr)
	waitTLS(t, p, tc)
	return p
}

// GatewayTLS is the client configuration of the PKI's gateway client.
func GatewayTLS(t testing.TB, dir string) *tls.Config {
	t.Helper()
	c, err := pki.ClientTLS(filepath.Join(dir, pki.FileCA), filepath.Join(dir, pki.FileGatewayClient), filepath.Join(dir, pki.FileGatewayClientKey))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// StartMosquitto runs Mosquitto on a loopback port with TLS (broker.crt),
// client certificates from the gateway CA required (the certificate's CN is
// the username), TCP_NODELAY on (docs/design.md#pitfalls). It skips the test
// when mosquitto is not installed.
func StartMosquitto(t testing.TB, dir string) *Proc {
	t.Helper()
	bin := Find("mosquitto")
	if bin == "" {
		t.Skip("mosquitto not installed (apt-get install mosquitto)")
	}
	addr := FreePort(t)
	_, port, _ := net.SplitHostPort(addr)
	conf := fmt.Sprintf(`per_listener_settings false
listener %s 127.0.0.1
cafile %s
certfile %s
keyfile %s
require_certificate true
use_identity_as_username true
allow_anonymous false
persistence false
set_tcp_nodelay true
max_inflight_messages 0
max_queued_messages 100000
log_dest stderr
log_type error
log_type warning
log_type notice
`, port, ClientCABundle(t, dir), filepath.Join(dir, pki.FileBroker), filepath.Join(dir, pki.FileBrokerKey))
	if u, err := user.Current(); err == nil {
		conf += "user " + u.Username + "\n" // as root, mosquitto would switch to user mosquitto and lose the key
	}
	cf := filepath.Join(t.TempDir(), "mosquitto.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return start(t, "mosquitto", bin, []string{"-c", cf}, addr, GatewayTLS(t, dir))
}

// StartNATS runs n NATS servers with MQTT and JetStream enabled (MQTT in NATS
// needs both a server_name and JetStream), clustered when n > 1 (JetStream
// replicas need at least 3 nodes). MQTT listeners use TLS with broker.crt and
// require client certificates from the gateway CA. It skips the test when
// nats-server is not installed.
func StartNATS(t testing.TB, dir string, n int) []*Proc {
	t.Helper()
	bin := Find("nats-server")
	if bin == "" {
		t.Skip("nats-server not installed (apt-get install nats-server)")
	}
	if n < 1 {
		n = 1
	}
	bundle := ClientCABundle(t, dir)
	type node struct{ client, cluster, mqtt, store string }
	nodes := make([]node, n)
	for i := range nodes {
		nodes[i] = node{FreePort(t), FreePort(t), FreePort(t), t.TempDir()}
	}
	var routes []string
	for _, nd := range nodes {
		routes = append(routes, fmt.Sprintf("nats-route://%s", nd.cluster))
	}
	confs := make([]string, n)
	for i, nd := range nodes {
		conf := fmt.Sprintf(`server_name: n%d
listen: %q
jetstream { store_dir: %q, max_memory_store: 64MB, max_file_store: 256MB }
mqtt {
  listen: %q
  tls { cert_file: %q, key_file: %q, ca_file: %q, verify: true, timeout: 5 }
}
`, i+1, nd.client, nd.store, nd.mqtt, filepath.Join(dir, pki.FileBroker), filepath.Join(dir, pki.FileBrokerKey), bundle)
		if n > 1 {
			conf += fmt.Sprintf("cluster { name: vitalgate, listen: %q, routes: [%s] }\n", nd.cluster, strings.Join(quoteAll(routes), ", "))
		}
		cf := filepath.Join(t.TempDir(), fmt.Sprintf("nats-%d.conf", i+1))
		if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		confs[i] = cf
	}
	procs := make([]*Proc, n)
	// A JetStream cluster elects its meta leader only once a quorum is up, and
	// the MQTT listener opens after that: start every node before waiting.
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range nodes {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			p := startNoWait(t, fmt.Sprintf("nats-n%d", i+1), bin, []string{"-c", confs[i]}, nodes[i].mqtt)
			mu.Lock()
			procs[i] = p
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	for _, p := range procs {
		waitTLS(t, p, GatewayTLS(t, dir))
	}
	return procs
}

func quoteAll(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = fmt.Sprintf("%q", v)
	}
	return out
}

func startNoWait(t testing.TB, name, bin string, args []string, mqttAddr string) *Proc {
	p := &Proc{Name: name, Addr: mqttAddr, out: &syncBuf{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Errorf("start %s: %v", name, err)
		close(p.done)
		return p
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(p.Stop)
	return p
}

func waitTLS(t testing.TB, p *Proc, tc *tls.Config) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		d := tls.Dialer{Config: tc, NetDialer: &net.Dialer{Timeout: time.Second}}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := d.DialContext(ctx, "tcp", p.Addr)
		cancel()
		if err == nil {
			_ = c.Close()
			return
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited:\n%s", p.Name, p.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready on %s: %v\n%s", p.Name, p.Addr, err, p.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  []byte
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.b) < 1<<20 { // bounded
		s.b = append(s.b, p...)
	}
	return len(p), nil
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b)
}
