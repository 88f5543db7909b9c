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
	"strconv"
	"strings"
	"time"
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
	Pprof          bool    // serve /debug/pprof/ on the gateway's http address
	CPUs           CPUSet  // pinned to these CPUs; none: not pinned
	// Keys set as given (anomaly: {...}, say), over the ones above.
	Extra map[string]any
}

// GatewayProc is the gateway running as a child process.
type GatewayProc struct{ *child }

// BuildGateway compiles the gateway program into dir/bin with the go tool (the
// working directory must be inside the module) and returns its path.
func BuildGateway(ctx context.Context, dir string) (string, error) { return build(ctx, dir, "gateway") }

// build compiles the module's program name into dir/bin.
func build(ctx context.Context, dir, name string) (string, error) {
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o700); err != nil {
		return "", fmt.Errorf("build directory: %w", err)
	}
	out := filepath.Join(dir, "bin", name)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/vitalgate/vitalgate/"+name)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s (run from the module, or pass --%s-bin): %v: %s", name, name, err, bytes.TrimSpace(b))
	}
	return out, nil
}

// StartGateway writes a configuration file into cfg.Data, starts bin with
// it, and waits until the gateway logs that it started, which names its
// bound addresses.
func StartGateway(ctx context.Context, bin string, cfg GatewayConfig) (*GatewayProc, error) {
	rate := cfg.RatePerDevice
	file := map[string]any{
		"pki": cfg.PKI, "data": cfg.Data, "listen": "127.0.0.1:0", "http": "127.0.0.1:0", "https": "127.0.0.1:0",
		"cloud": []string{cfg.Cloud}, "log": "info",
		"max_connections": cfg.MaxConnections, "accept_rate": cfg.AcceptRate,
		"rate": map[string]any{"messages": rate, "burst": int(rate), "bytes": rate * (64 << 10), "byte_burst": int(rate) * (64 << 10)},
	}
	if cfg.Cloud == "" {
		delete(file, "cloud") // the embedded cloud broker
	}
	if rate == 0 {
		delete(file, "rate") // the gateway's default limits
	}
	if cfg.RelayWindow > 0 {
		file["relay"] = map[string]any{"window": cfg.RelayWindow}
	}
	if cfg.Pprof {
		file["pprof"] = true
	}
	for k, v := range cfg.Extra {
		file[k] = v
	}
	c, err := startWithConfig(ctx, "gateway", bin, filepath.Join(cfg.Data, "gateway.yaml"), file, `msg="gateway started"`, cfg.CPUs)
	if err != nil {
		return nil, err
	}
	return &GatewayProc{c}, nil
}

// DeviceAddr is the device listener.
func (g *GatewayProc) DeviceAddr() string { return g.field("devices") }

// Metric reads one sample from the gateway's /metrics: name is the series
// as written there, labels included.
func (g *GatewayProc) Metric(name string) (float64, error) {
	all, err := g.scrape()
	if err != nil {
		return 0, err
	}
	v, ok := all[name]
	if !ok {
		return 0, fmt.Errorf("gateway metric %s not found", name)
	}
	return v, nil
}

// scrape reads every sample of the gateway's /metrics at once.
func (g *GatewayProc) scrape() (map[string]float64, error) {
	addr := g.field("http")
	if addr == "" {
		return nil, errors.New("gateway has no HTTP address")
	}
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("gateway metrics: %w", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 8<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}

// The gateway's histograms of PUBLISH handling time (read to verdict,
// durable enqueue included) and of queue commits (page writes and
// fdatasyncs), and their bucket bounds in seconds.
const (
	publishHistogram = "vitalgate_gateway_publish_seconds"
	commitHistogram  = "vitalgate_queue_commit_seconds"
)

var latencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1}

// Buckets reads, from one scrape, the cumulative counts of histogram name
// at the bounds les, followed by its total count; nil if the gateway does
// not answer.
func (g *GatewayProc) Buckets(name string, les []float64) []float64 {
	all, err := g.scrape()
	if err != nil {
		return nil
	}
	out := make([]float64, len(les)+1)
	for i, le := range les {
		v, ok := all[fmt.Sprintf("%s_bucket{le=%q}", name, strconv.FormatFloat(le, 'g', -1, 64))]
		if !ok {
			return nil
		}
		out[i] = v
	}
	v, ok := all[name+"_count"]
	if !ok {
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

// bucketQuantileMS is [bucketQuantile] in milliseconds, with its 0 (unknown)
// and -1 (beyond the last bound) kept as they are.
func bucketQuantileMS(les, before, after []float64, q float64) float64 {
	v := bucketQuantile(les, before, after, q)
	if v > 0 {
		return v * 1000
	}
	return v
}

// HTTPAddr is the gateway's operations address (/metrics, and /debug/pprof/
// when enabled).
func (g *GatewayProc) HTTPAddr() string { return g.field("http") }

// cpuProfile writes the gateway's CPU profile of d, starting after delay,
// to file (from /debug/pprof/profile: the gateway must serve it) and sends
// the outcome on the channel it returns.
func (g *GatewayProc) cpuProfile(ctx context.Context, file string, delay, d time.Duration) <-chan error {
	errc := make(chan error, 1)
	go func() {
		errc <- func() error {
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return ctx.Err()
			}
			ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
			defer cancel()
			url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", g.HTTPAddr(), int(d.Seconds()))
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return err
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("gateway CPU profile: %w", err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("gateway CPU profile: %s", resp.Status)
			}
			b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
			if err != nil {
				return fmt.Errorf("gateway CPU profile: %w", err)
			}
			if err := os.WriteFile(file, b, 0o644); err != nil {
				return fmt.Errorf("gateway CPU profile: %w", err)
			}
			return nil
		}()
	}()
	return errc
}
