package bench

import (
	"context"
	"path/filepath"
)

// CloudProc is the cloud broker (the broker program) running as a child
// process, so that the fleet's thousands of goroutines in the harness do not
// starve the gateway's cloud connection, as a cloud on its own host is not.
type CloudProc struct{ *child }

// BuildBroker compiles the broker program into dir/bin.
func BuildBroker(ctx context.Context, dir string) (string, error) { return build(ctx, dir, "broker") }

// StartCloud runs bin with a configuration written into dir: the PKI of
// pkiDir, gateway and app listeners on loopback ports of their own, no
// persistence (the cloud's disk is not the gateway's cost) and per-app
// buffers large enough that the bench's app is never dropped (mochi drops a
// QoS 1 delivery when the subscriber is max_inflight or max_writes_pending
// behind). It runs pinned to cpus (none: not pinned).
func StartCloud(ctx context.Context, bin, pkiDir, dir string, cpus CPUSet) (*CloudProc, error) {
	c, err := startWithConfig(ctx, "cloud broker", bin, filepath.Join(dir, "broker.yaml"), map[string]any{
		"pki": pkiDir, "listen": "127.0.0.1:0", "apps": "127.0.0.1:0", "ws": "", "http": "", "data": "",
		"max_clients": 100, "max_inflight": 65535, "max_writes_pending": 1 << 16,
	}, `msg="cloud broker started"`, cpus)
	if err != nil {
		return nil, err
	}
	return &CloudProc{c}, nil
}

// GatewayAddr is the listener of gateways (mutual TLS).
func (c *CloudProc) GatewayAddr() string { return c.field("gateways") }

// AppsAddr is the listener of apps (TLS, JWT).
func (c *CloudProc) AppsAddr() string { return c.field("apps") }
