package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/internal/cli"
)

// healthUsage is the synopsis of `gateway healthcheck`.
const healthUsage = "usage: gateway healthcheck [--config FILE] [--http ADDR] [--timeout D]"

// healthCmd asks a running gateway's /readyz whether it takes devices'
// messages: exit 0 when ready, 1 with the reasons otherwise. It is the
// container image's HEALTHCHECK (the image has no curl).
func healthCmd(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("gateway healthcheck", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "%s\n\nAsks the gateway's /readyz; exit status 0 when it is ready, 1 otherwise.\n\nflags:\n", healthUsage)
		fs.PrintDefaults()
	}
	c := config.Default()
	file := fs.String("config", "", "the gateway's YAML configuration (its http address)")
	httpAddr := fs.String("http", "", "the gateway's http address (default: the configuration's, "+c.HTTP+")")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after this long")
	if err := cli.ParseFlags(fs, args, out); err != nil {
		return err
	}
	if *file != "" {
		if err := cli.LoadYAML(*file, &c); err != nil {
			return err
		}
	}
	addr := c.HTTP
	if *httpAddr != "" {
		addr = *httpAddr
	}
	if addr == "" {
		return errors.New("healthcheck: the gateway has no http address (http is empty)")
	}
	if host, port, err := net.SplitHostPort(addr); err == nil && (host == "" || host == "0.0.0.0" || host == "::") {
		addr = net.JoinHostPort("127.0.0.1", port) // listening everywhere: ask on loopback
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: not ready (%s): %s", resp.Status, strings.TrimSpace(string(body)))
	}
	fmt.Fprintf(out, "ready: %s\n", strings.TrimSpace(string(body)))
	return nil
}
