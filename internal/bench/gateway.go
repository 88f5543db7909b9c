package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"
)

// GatewayConfig is what the harness sets in the gateway's configuration
// file; every other key keeps the gateway's default.
type GatewayConfig struct {
	PKI            string
	Data           string
	Cloud          string  // ssl://host:port of the cloud broker's gateway listener
	MaxConnections int     // above the idle connections held
	AcceptRate     float64 // handshakes per second: high, so the storm measures CPU, not admission control
	RatePerDevice  float64 // messages per second per device: high, so the rate limit checks but never bites
	RelayWindow    int     // relay.window; 0: the gateway's default
}

// GatewayProc is the gateway running as a child process.
type GatewayProc struct {
	cmd      *exec.Cmd
	devices  string
	http     string
	mu       sync.Mutex
	tail     []string // last lines of its log
	exited   chan struct{}
	exitErr  error
	stopOnce sync.Once
}

// BuildGateway compiles the gateway program into dir/bin with the go tool (the
// working directory must be inside the module) and returns its path.
func BuildGateway(ctx context.Context, dir string) (string, error) {
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o700); err != nil {
		return "", fmt.Errorf("build directory: %w", err)
	}
	out := filepath.Join(dir, "bin", "gateway")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/vitalgate/vitalgate/gateway")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build gateway (run from the module, or pass --gateway-bin): %v: %s", err, bytes.TrimSpace(b))
	}
	return out, nil
}

var (
	startedRE = regexp.MustCompile(`msg="gateway started"`)
	devicesRE = regexp.MustCompile(`\bdevices=(\S+)`)
	httpRE    = regexp.MustCompile(`\bhttp=(\S+)`)
)

// StartGateway writes a configuration file into cfg.Data, starts bin with
// it, and waits until the gateway logs that it started, which names its
// bound addresses.
func StartGateway(ctx context.Context, bin string, cfg GatewayConfig) (*GatewayProc, error) {
	if err := os.MkdirAll(cfg.Data, 0o700); err != nil {
		return nil, fmt.Errorf("gateway data: %w", err)
	}
	rate := cfg.RatePerDevice
	file := map[string]any{
		"pki": cfg.PKI, "data": cfg.Data, "listen": "127.0.0.1:0", "http": "127.0.0.1:0",
		"cloud": []string{cfg.Cloud}, "log": "info",
		"max_connections": cfg.MaxConnections, "accept_rate": cfg.AcceptRate,
		"rate": map[string]any{"messages": rate, "burst": int(rate), "bytes": rate * (64 << 10), "byte_burst": int(rate) * (64 << 10)},
	}
	if cfg.RelayWindow > 0 {
		file["relay"] = map[string]any{"window": cfg.RelayWindow}
	}
	b, err := yaml.Marshal(file)
	if err != nil {
		return nil, fmt.Errorf("gateway config: %w", err)
	}
	path := filepath.Join(cfg.Data, "gateway.yaml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("write gateway config: %w", err)
	}
	g := &GatewayProc{cmd: exec.Command(bin, "--config", path), exited: make(chan struct{})}
	stderr, err := g.cmd.StderrPipe()
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g.cmd.Stdout = io.Discard
	if err := g.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start gateway %s: %w", bin, err)
	}
	ready := make(chan struct{})
	go g.readLog(stderr, ready)
	go func() {
		g.exitErr = g.cmd.Wait()
		close(g.exited)
	}()
	t := time.NewTimer(60 * time.Second)
	defer t.Stop()
	select {
	case <-ready:
		return g, nil
	case <-g.exited:
		return nil, fmt.Errorf("gateway exited at start (%v): %s", g.exitErr, g.Tail())
	case <-t.C:
	case <-ctx.Done():
	}
	g.Stop()
	return nil, fmt.Errorf("gateway did not start: %s", g.Tail())
}

// readLog keeps the last lines of the gateway's log and finds its start.
func (g *GatewayProc) readLog(r io.Reader, ready chan struct{}) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	signalled := false
	for sc.Scan() {
		line := sc.Text()
		g.mu.Lock()
		g.tail = append(g.tail, line)
		if len(g.tail) > 20 {
			g.tail = g.tail[1:]
		}
		if !signalled && startedRE.MatchString(line) {
			if m := devicesRE.FindStringSubmatch(line); m != nil {
				g.devices = m[1]
			}
			if m := httpRE.FindStringSubmatch(line); m != nil {
				g.http = m[1]
			}
			signalled = true
			close(ready)
		}
		g.mu.Unlock()
	}
}

// Tail is the end of the gateway's log.
func (g *GatewayProc) Tail() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return strings.Join(g.tail, "\n")
}

// Pid is the process ID.
func (g *GatewayProc) Pid() int { return g.cmd.Process.Pid }

// DeviceAddr is the device listener.
func (g *GatewayProc) DeviceAddr() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.devices
}

// Metric reads one unlabelled sample from the gateway's /metrics.
func (g *GatewayProc) Metric(name string) (float64, error) {
	g.mu.Lock()
	addr := g.http
	g.mu.Unlock()
	if addr == "" {
		return 0, errors.New("gateway has no HTTP address")
	}
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, fmt.Errorf("gateway metrics: %w", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 8<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("gateway metric %s not found", name)
}

// Stop sends SIGTERM (the gateway drains and closes) and kills it after
// 15 seconds. Safe to call twice.
func (g *GatewayProc) Stop() error {
	g.stopOnce.Do(func() {
		_ = g.cmd.Process.Signal(syscall.SIGTERM)
		t := time.NewTimer(15 * time.Second)
		defer t.Stop()
		select {
		case <-g.exited:
		case <-t.C:
			_ = g.cmd.Process.Kill()
			<-g.exited
		}
	})
	return g.exitErr
}

// The gateway's histogram of PUBLISH handling time (read to verdict, durable
// enqueue included) and its bucket bounds in seconds.
const publishHistogram = "vitalgate_gateway_publish_seconds"

var publishBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1}

// Buckets reads the cumulative counts of histogram name at the bounds les,
// followed by its total count; nil if the gateway does not answer.
func (g *GatewayProc) Buckets(name string, les []float64) []float64 {
	out := make([]float64, len(les)+1)
	for i, le := range les {
		v, err := g.Metric(fmt.Sprintf("%s_bucket{le=%q}", name, strconv.FormatFloat(le, 'g', -1, 64)))
		if err != nil {
			return nil
		}
		out[i] = v
	}
	v, err := g.Metric(name + "_count")
	if err != nil {
		return nil
	}
	out[len(les)] = v
	return out
}

// bucketQuantile is the smallest bound under which at least q of the
// observations between two readings of [GatewayProc.Buckets] fall: 0 if
// unknown (or none observed), -1 if beyond the last bound.
func bucketQuantile(les, before, after []float64, q float64) float64 {
	n := len(les)
	if len(before) != n+1 || len(after) != n+1 {
		return 0
	}
	total := after[n] - before[n]
	if total <= 0 {
		return 0
	}
	for i, le := range les {
		if after[i]-before[i] >= q*total {
			return le
		}
	}
	return -1
}
