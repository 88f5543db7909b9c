package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
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

// child is one of the project's programs run as a child process. It is
// ready once its log (stderr, slog text) has a line matching started; the
// key=value pairs of that line (its bound addresses) are kept as fields.
type child struct {
	name     string
	cmd      *exec.Cmd
	started  *regexp.Regexp
	mu       sync.Mutex
	fields   map[string]string
	tail     []string // last lines of its log
	exited   chan struct{}
	exitErr  error
	stopErr  error
	stopOnce sync.Once
}

// fieldRE matches a key=value pair of a slog text line; a value with spaces
// or quotes is quoted there.
var fieldRE = regexp.MustCompile(`(?:^|\s)([\w.]+)=("(?:[^"\\]|\\.)*"|\S*)`)

// startWithConfig writes config as YAML to path (creating its directory)
// and starts bin --config path.
func startWithConfig(ctx context.Context, name, bin, path string, config map[string]any, started string, cpus CPUSet) (*child, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("%s directory: %w", name, err)
	}
	b, err := yaml.Marshal(config)
	if err != nil {
		return nil, fmt.Errorf("%s config: %w", name, err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("write %s config: %w", name, err)
	}
	return startChild(ctx, name, exec.Command(bin, "--config", path), started, cpus)
}

// startChild starts cmd pinned to cpus (none: not pinned) and waits up to a minute for its started line.
func startChild(ctx context.Context, name string, cmd *exec.Cmd, started string, cpus CPUSet) (*child, error) {
	c := &child{name: name, cmd: cmd, started: regexp.MustCompile(started), exited: make(chan struct{})}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	cmd.Stdout = io.Discard
	setParentDeath(cmd)
	if err := startPinned(cmd, cpus); err != nil {
		return nil, fmt.Errorf("start %s %s: %w", name, cmd.Path, err)
	}
	ready, logDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(logDone)
		c.readLog(stderr, ready)
	}()
	go func() {
		<-logDone // Wait closes the pipe: read all of it first
		c.exitErr = cmd.Wait()
		close(c.exited)
	}()
	t := time.NewTimer(60 * time.Second)
	defer t.Stop()
	select {
	case <-ready:
		return c, nil
	case <-c.exited:
		return nil, fmt.Errorf("%s exited at start (%v): %s", name, c.exitErr, c.Tail())
	case <-t.C:
	case <-ctx.Done():
	}
	c.Stop()
	return nil, fmt.Errorf("%s did not start: %s", name, c.Tail())
}

// readLog keeps the last lines of the log and finds the started line.
func (c *child) readLog(r io.Reader, ready chan struct{}) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	signalled := false
	for sc.Scan() {
		line := sc.Text()
		c.mu.Lock()
		c.tail = append(c.tail, line)
		if len(c.tail) > 20 {
			c.tail = c.tail[1:]
		}
		if !signalled && c.started.MatchString(line) {
			c.fields = map[string]string{}
			for _, m := range fieldRE.FindAllStringSubmatch(line, -1) {
				v := m[2]
				if u, err := strconv.Unquote(v); err == nil {
					v = u
				}
				c.fields[m[1]] = v
			}
			signalled = true
			close(ready)
		}
		c.mu.Unlock()
	}
	// A line too long for the scanner ends the scan: keep draining, or
	// the child blocks on its next write to a full pipe.
	_, _ = io.Copy(io.Discard, r)
}

// field is a value of the started line, "" if absent.
func (c *child) field(key string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fields[key]
}

// Tail is the end of the log.
func (c *child) Tail() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.tail, "\n")
}

// Pid is the process ID.
func (c *child) Pid() int { return c.cmd.Process.Pid }

// Stop sends SIGTERM (our programs drain and close) and kills the process
// after 15 seconds, which it reports as an error: a shutdown that hangs is
// a finding. Safe to call twice.
func (c *child) Stop() error {
	c.stopOnce.Do(func() {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		t := time.NewTimer(15 * time.Second)
		defer t.Stop()
		select {
		case <-c.exited:
			c.stopErr = c.exitErr
		case <-t.C:
			_ = c.cmd.Process.Kill()
			<-c.exited
			c.stopErr = fmt.Errorf("%s did not exit within 15 s of SIGTERM and was killed: %s", c.name, c.Tail())
		}
	})
	return c.stopErr
}
