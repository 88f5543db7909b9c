package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// RelayProc is a relay of the baseline phases, the setups a user would
// pick instead of the gateway, running as a child process: the bare mochi
// relay ([RelayMain]) or Mosquitto with a bridge.
type RelayProc struct {
	*child
	addr string // device listener, when not a field of the started line
}

// DeviceAddr is the listener of devices (mutual TLS).
func (p *RelayProc) DeviceAddr() string {
	if p.addr != "" {
		return p.addr
	}
	return p.field("devices")
}

// StartMochiRelay runs bin (this program when "") with [RelayCommand],
// pinned to cpus (none: not pinned): the bare mochi relay of pkiDir's
// gateway identity, forwarding to the cloud broker's gateway listener
// cloud with window messages in flight.
func StartMochiRelay(ctx context.Context, bin, pkiDir, cloud string, window int, cpus CPUSet) (*RelayProc, error) {
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("mochi relay: %w", err)
		}
		bin = exe
	}
	cmd := exec.Command(bin, RelayCommand, "--pki", pkiDir, "--cloud", cloud, "--window", strconv.Itoa(window))
	c, err := startChild(ctx, "mochi relay", cmd, `msg="bench relay started"`, cpus)
	if err != nil {
		return nil, err
	}
	return &RelayProc{child: c}, nil
}

// FindMosquitto is bin when set, else mosquitto on the PATH or in /usr/sbin
// or /usr/local/sbin (where Debian and source installs put it); "" when
// there is none.
func FindMosquitto(bin string) string {
	if bin != "" {
		return bin
	}
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/usr/local/sbin"} {
		p := filepath.Join(d, "mosquitto")
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// StartMosquitto runs Mosquitto (bin) with a configuration written into
// dir: see [mosquittoConf]. It runs pinned to cpus (none: not pinned).
// Mosquitto needs its port in the file: a loopback port free a moment
// before, tried again (three times in all) if taken since.
func StartMosquitto(ctx context.Context, bin, pkiDir, dir, cloud string, window int, cpus CPUSet) (*RelayProc, error) {
	cert, err := pki.LoadCert(filepath.Join(pkiDir, pki.FileGatewayClient))
	if err != nil {
		return nil, fmt.Errorf("mosquitto bridge: %w", err)
	}
	site, id := pki.ParseSiteAndID(cert)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("mosquitto directory: %w", err)
	}
	// OpenSSL, unlike Go, trusts a chain only up to a self-signed root: the
	// device CA with the root that signs it (which also lets certificates
	// the root signs directly connect as devices; Mosquitto cannot trust an
	// intermediate alone).
	bundle := filepath.Join(dir, "device-cas.pem")
	if err := concatFiles(bundle, filepath.Join(pkiDir, pki.FileDeviceCA), filepath.Join(pkiDir, pki.FileCA)); err != nil {
		return nil, fmt.Errorf("mosquitto device CAs: %w", err)
	}
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		path := filepath.Join(dir, "mosquitto.conf")
		if err := os.WriteFile(path, []byte(mosquittoConf(port, pkiDir, bundle, cloud, site, id, window)), 0o600); err != nil {
			return nil, fmt.Errorf("write mosquitto config: %w", err)
		}
		c, err := startChild(ctx, "mosquitto", exec.Command(bin, "-c", path), `mosquitto version \S+ running`, cpus)
		if err == nil {
			return &RelayProc{child: c, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}, nil
		}
		if attempt == 3 || !strings.Contains(err.Error(), "in use") {
			return nil, err
		}
	}
}

// freePort is a loopback port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// mosquittoConf is Mosquitto as a user would set it up in the gateway's
// place: devices on a loopback port over mutual TLS (the gateway's server
// certificate, the device CA and its root in the file deviceCAs, a client
// certificate required, TLS 1.2 at
// least), no other check; a bridge to the cloud broker at cloud over TLS
// with the gateway's client certificate and ID (the cloud's ACL then lets
// it publish telemetry/{site}/...), forwarding devices/{id}/telemetry QoS 1
// to telemetry/{site}/{id}/telemetry, window messages in flight (the
// gateway relay's window). Its queue is in memory: Mosquitto acknowledges a
// device's message before the cloud has it, as the bare mochi relay does.
func mosquittoConf(port int, pkiDir, deviceCAs, cloud, site, id string, window int) string {
	p := func(n string) string { return filepath.Join(pkiDir, n) }
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("per_listener_settings false")
	w("persistence false")
	w("log_dest stderr")
	w("log_type error\nlog_type warning\nlog_type notice\nlog_type information") // information: the started line
	w("log_timestamp false")
	w("set_tcp_nodelay true") // as every Go program here (Nagle off)
	w("max_inflight_messages %d", window)
	// Queued beyond the window (the bridge's backlog) before Mosquitto drops:
	// room for a phase of the fleet; what it drops counts as undelivered.
	w("max_queued_messages 1000000")
	if u, err := user.Current(); err == nil {
		w("user %s", u.Username) // as root, Mosquitto would switch to user mosquitto and lose the keys
	}
	w("listener %d 127.0.0.1", port)
	w("cafile %s\ncertfile %s\nkeyfile %s", deviceCAs, p(pki.FileGateway), p(pki.FileGatewayKey))
	w("require_certificate true\ntls_version tlsv1.2\nallow_anonymous true")
	w("connection cloud\naddress %s", cloud)
	w("remote_clientid %s", id)
	w("bridge_protocol_version mqttv311\ntry_private false\nnotifications false\ncleansession true")
	w("start_type automatic\nrestart_timeout 1\nkeepalive_interval 60")
	w("bridge_cafile %s\nbridge_certfile %s\nbridge_keyfile %s", p(pki.FileCA), p(pki.FileGatewayClient), p(pki.FileGatewayClientKey))
	w("bridge_tls_version tlsv1.2")
	w("topic +/telemetry out 1 devices/ telemetry/%s/", site)
	return b.String()
}

// concatFiles writes the files from, one after the other, to path.
func concatFiles(path string, from ...string) error {
	var b []byte
	for _, f := range from {
		c, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		b = append(b, c...)
	}
	return os.WriteFile(path, b, 0o600)
}
