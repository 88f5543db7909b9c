package server

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/vitalgate/vitalgate/internal/cloud"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// startCloud runs a standalone cloud broker with persistent state in data.
func startCloud(t *testing.T, pkiDir, data, gwAddr, appsAddr string) *cloud.Broker {
	t.Helper()
	c := cloud.Default()
	c.PKI, c.Data, c.Listen, c.Apps, c.WS, c.HTTP = pkiDir, data, gwAddr, appsAddr, "", ""
	b, err := cloud.New(c, quietLog(t))
	if err != nil {
		t.Fatal(err)
	}
	var startErr error
	// A restarted broker may find its port in TIME_WAIT for a moment.
	testutil.Eventually(t, 10*time.Second, "the cloud broker to start", func() bool {
		startErr = b.Start()
		return startErr == nil
	})
	t.Cleanup(func() { b.Close() })
	return b
}

// persistentApp subscribes with a persistent session, so records published
// while it is away (or while the broker restarts) wait for it.
func (e *env) persistentApp(url string) *app {
	a := e.appWith(url, false)
	return a
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// acked publishes seq from..to as one device and returns the seqs the
// gateway acknowledged with success before the connection broke.
func publishStream(t *testing.T, c *paho5.Client, e *env, id string, from, to uint64) []uint64 {
	var ok []uint64
	for s := from; s <= to; s++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		pr, err := c.Publish(ctx, &paho5.Publish{Topic: telemetryTopic(id), QoS: 1, Payload: e.sign(id, spo2(id, s))})
		cancel()
		if err != nil || pr == nil {
			return ok
		}
		if pr.ReasonCode == 0 {
			ok = append(ok, s)
		}
	}
	return ok
}

// TestKillNineLosesNothing runs the gateway as a process, kills it with
// SIGKILL while a device streams, restarts it, and checks that every record
// the device saw acknowledged reaches the cloud.
func TestKillNineLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the gateway binary")
	}
	bin := filepath.Join(t.TempDir(), "gateway")
	build := exec.Command("go", "build", "-o", bin, "github.com/vitalgate/vitalgate/gateway")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build gateway: %v\n%s", err, out)
	}
	e := &env{t: t, pki: newPKI(t)}
	e.cfg = testConfig(t, e.pki)
	e.device("oxi-k")
	cl := startCloud(t, e.pki, t.TempDir(), "127.0.0.1:0", "127.0.0.1:0")
	a := e.persistentApp("ssl://" + cl.AppsAddr())
	devAddr := freeAddr(t)
	data := t.TempDir()

	run := func() *exec.Cmd {
		cmd := exec.Command(bin, "--pki", e.pki, "--listen", devAddr, "--cloud", "ssl://"+cl.GatewayAddr(),
			"--data", data, "--http", "", "--https", "", "--log", "warn")
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	connect := func() *paho5.Client {
		var c *paho5.Client
		testutil.Eventually(t, 20*time.Second, "the gateway process to accept the device", func() bool {
			var err error
			c, _, err = e.dialAt(devAddr, "oxi-k")
			return err == nil
		})
		return c
	}
	e.gwAddr = devAddr

	var acked []uint64
	cmd := run()
	c := connect()
	// Kill the process while the stream is running.
	var wg sync.WaitGroup
	wg.Add(1)
	var first []uint64
	go func() {
		defer wg.Done()
		first = publishStream(t, c, e, "oxi-k", 1, 100000)
	}()
	testutil.Eventually(t, 30*time.Second, "records flowing", func() bool { return len(a.ids()) >= 50 })
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	wg.Wait()
	acked = append(acked, first...)
	if len(first) == 0 {
		t.Fatal("nothing acknowledged before the kill")
	}
	last := first[len(first)-1]

	cmd = run()
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	c = connect()
	// The device resumes after its last acknowledged seq; what was in flight
	// at the kill may have been stored already, so it gets replay or success.
	more := publishStream(t, c, e, "oxi-k", last+2, last+51)
	if len(more) != 50 {
		t.Fatalf("after restart %d of 50 acknowledged", len(more))
	}
	acked = append(acked, more...)
	testutil.Eventually(t, 30*time.Second, fmt.Sprintf("all %d acknowledged records at the cloud", len(acked)), func() bool {
		ids := a.ids()
		for _, s := range acked {
			if ids[fmt.Sprintf("oxi-k:%d", s)] == 0 {
				return false
			}
		}
		return true
	})
	t.Logf("%d records acknowledged across a SIGKILL, all delivered (%d distinct ids at the cloud)", len(acked), len(a.ids()))
}

// outsideCloud is a standalone cloud broker with persistent state, and an
// app with a persistent session on it.
type outsideCloud struct {
	broker                 *cloud.Broker
	app                    *app
	data, gwAddr, appsAddr string
}

// startWithOutsideCloud starts a gateway relaying to an outside cloud
// broker, which a test can stop and start again on the same addresses.
func startWithOutsideCloud(t *testing.T) (*env, outsideCloud) {
	e := &env{t: t, pki: newPKI(t)}
	o := outsideCloud{data: t.TempDir(), gwAddr: freeAddr(t), appsAddr: freeAddr(t)}
	o.broker = startCloud(t, e.pki, o.data, o.gwAddr, o.appsAddr)
	o.app = e.persistentApp("ssl://" + o.appsAddr)
	e.cfg = testConfig(t, e.pki)
	e.cfg.Cloud = []string{"ssl://" + o.gwAddr}
	e.start()
	return e, o
}

// TestCloudOutage: while the cloud broker is down the queue holds what the
// gateway acknowledged; when it is back, everything drains.
func TestCloudOutage(t *testing.T) {
	e, o := startWithOutsideCloud(t)
	cl, a, cloudData, gwAddr, appsAddr := o.broker, o.app, o.data, o.gwAddr, o.appsAddr
	e.device("glu-o")
	c := e.mustDial5("glu-o")
	if got := publishStream(t, c, e, "glu-o", 1, 50); len(got) != 50 {
		t.Fatalf("%d of 50 acknowledged", len(got))
	}
	testutil.Eventually(t, 10*time.Second, "50 records at the cloud", func() bool { return len(a.ids()) == 50 })

	cl.Close() // outage
	a.c.Disconnect(10)
	if got := publishStream(t, c, e, "glu-o", 51, 150); len(got) != 100 {
		t.Fatalf("during the outage %d of 100 acknowledged", len(got))
	}
	if n := e.gw.Queue().Len(); n < 100 {
		t.Fatalf("queue holds %d records during the outage, want >= 100", n)
	}
	startCloud(t, e.pki, cloudData, gwAddr, appsAddr)
	testutil.Eventually(t, 30*time.Second, "the queue to drain", func() bool { return e.gw.Queue().Len() == 0 })
	if seen := e.collect(a.ids(), appsAddr, 150); len(seen) != 150 {
		t.Fatalf("%d of 150 distinct records reached the app", len(seen))
	}
}

// collect gathers, into seen, the records the app's persistent session kept
// at the cloud, until it holds want distinct IDs or 30 s have passed. The
// queue is empty only once the cloud acknowledged everything; mochi resends
// a session's in-flight messages when the session resumes, so an app that
// misses some reconnects, as a real one would.
func (e *env) collect(seen map[string]int, appsAddr string, want int) map[string]int {
	deadline := time.Now().Add(30 * time.Second)
	for len(seen) < want && time.Now().Before(deadline) {
		a := e.persistentApp("ssl://" + appsAddr)
		end := time.Now().Add(3 * time.Second)
		for time.Now().Before(end) && len(a.ids())+len(seen) < want {
			time.Sleep(20 * time.Millisecond)
		}
		for k := range a.ids() {
			seen[k]++
		}
		a.c.Disconnect(10)
	}
	return seen
}

// TestCloudOutageOfAMinute is the outage of docs/design.md#figures: two
// devices keep sending through 60 s without the cloud; the queue holds what
// the gateway acknowledged, and all of it reaches the app once the cloud is
// back, although the relay's reconnect backoff has grown to its ceiling.
func TestCloudOutageOfAMinute(t *testing.T) {
	if testing.Short() {
		t.Skip("a 60-second outage")
	}
	e, o := startWithOutsideCloud(t)
	cl, a, cloudData, gwAddr, appsAddr := o.broker, o.app, o.data, o.gwAddr, o.appsAddr
	devs := []string{"oxi-m1", "bp-m2"}
	conns := make([]*paho5.Client, len(devs))
	for i, id := range devs {
		e.device(id)
		conns[i] = e.mustDial5(id)
	}
	testutil.Eventually(t, 10*time.Second, "the relay to connect", func() bool { return e.metric("vitalgate_relay_connected", "") == 1 })

	cl.Close() // outage
	a.c.Disconnect(10)
	start := time.Now()
	var mu sync.Mutex
	acked := map[string]bool{}
	var wg sync.WaitGroup
	for i, id := range devs {
		wg.Go(func() {
			// 4 records a second, at most 240: under the cloud's queue bound
			// for the app's offline session (max_inflight 1024).
			for seq := uint64(1); seq <= 240 && time.Since(start) < time.Minute; seq++ {
				for _, s := range publishStream(t, conns[i], e, id, seq, seq) {
					mu.Lock()
					acked[fmt.Sprintf("%s:%d", id, s)] = true
					mu.Unlock()
				}
				time.Sleep(250 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	if len(acked) < 200 {
		t.Fatalf("only %d records acknowledged during the outage", len(acked))
	}
	if n := e.gw.Queue().Len(); n < len(acked) {
		t.Fatalf("queue holds %d records after the outage, %d were acknowledged", n, len(acked))
	}
	t.Logf("%d records acknowledged in %v without the cloud", len(acked), time.Since(start).Round(time.Second))

	startCloud(t, e.pki, cloudData, gwAddr, appsAddr)
	testutil.Eventually(t, 30*time.Second, "the queue to drain", func() bool { return e.gw.Queue().Len() == 0 })
	seen := e.collect(map[string]int{}, appsAddr, len(acked))
	for id := range acked {
		if seen[id] == 0 {
			t.Errorf("acknowledged record %s never reached the app", id)
		}
	}
}
