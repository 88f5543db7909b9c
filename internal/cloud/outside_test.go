package cloud

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vitalgate/vitalgate/internal/cloud/cloudtest"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// mosquitto_sub, an app that knows nothing of this project, reads what a
// gateway published, with the JWT as its password.
func TestMosquittoSubReadsGatewayPublish(t *testing.T) {
	bin := cloudtest.Find("mosquitto_sub")
	if bin == "" {
		t.Skip("mosquitto_sub not installed (apt-get install mosquitto-clients)")
	}
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, ""))
	host, port := splitAddr(t, b.AppsAddr())

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errOut logBuf
	cmd := exec.CommandContext(ctx, bin, "-h", host, "-p", port, "--cafile", filepath.Join(dir, pki.FileCA),
		"-u", "app", "-P", mint(t, dir, "site1"), "-i", "mosq-app", "-V", "mqttv311", "-q", "1",
		"-t", "telemetry/site1/#", "-C", "1", "-v")
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	testutil.Eventually(t, waitFor, "mosquitto_sub subscribed", func() bool {
		return strings.Contains(scrape(t, b), "vitalgate_cloud_subscriptions 1")
	})
	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	wait(t, gw.Publish("telemetry/site1/dev-00001/temp", 1, false, "37.1"), "publish")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("mosquitto_sub: %v\n%s", err, errOut.String())
		}
	case <-ctx.Done():
		t.Fatalf("mosquitto_sub got nothing\n%s", errOut.String())
	}
	if got := strings.TrimSpace(out.String()); got != "telemetry/site1/dev-00001/temp 37.1" {
		t.Fatalf("mosquitto_sub printed %q", got)
	}

	// And with an expired or foreign token it is refused.
	cmd = exec.CommandContext(ctx, bin, "-h", host, "-p", port, "--cafile", filepath.Join(dir, pki.FileCA),
		"-u", "app", "-P", "x.y.z", "-V", "mqttv311", "-t", "telemetry/site1/#", "-C", "1")
	if outb, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("mosquitto_sub with a bad token succeeded: %s", outb)
	}
}

// relayThrough checks that a client with the gateway-client certificate can
// publish QoS 1 through an outside broker, and that a device certificate is
// refused there too.
func relayThrough(t *testing.T, dir string, pub, sub string) {
	t.Helper()
	in := newInbox()
	var s paho.Client
	testutil.Eventually(t, waitFor, "subscriber connected", func() bool { // NATS: until JetStream is ready
		c, err := pahoConnect(sub, gatewayTLS(t, dir), "monitor", "", "", true)
		s = c
		return err == nil
	})
	t.Cleanup(func() { s.Disconnect(100) })
	wait(t, s.Subscribe("telemetry/site1/#", 1, in.handler), "subscribe")
	gw := pahoClient(t, pub, gatewayTLS(t, dir), "gw1", "", "", true)
	for i := 0; i < 20; i++ {
		wait(t, gw.Publish("telemetry/site1/dev-00001/spo2", 1, false, fmt.Sprint(i)), "publish")
	}
	got := map[string]bool{}
	for len(got) < 20 { // paho may hand messages over out of order
		got[string(in.next(t).Payload())] = true
	}
	for i := 0; i < 20; i++ {
		if !got[fmt.Sprint(i)] {
			t.Fatalf("message %d missing: %v", i, got)
		}
	}
	if c, err := pahoConnect(pub, deviceTLS(t, dir), "dev-00001", "", "", true); err == nil {
		c.Disconnect(0)
		t.Fatal("device certificate accepted by the outside broker")
	}
}

func TestGatewayPublishesThroughMosquitto(t *testing.T) {
	dir := testPKI(t)
	m := cloudtest.StartMosquitto(t, dir)
	relayThrough(t, dir, m.URL(), m.URL())
}

func TestGatewayPublishesThroughNATS(t *testing.T) {
	dir := testPKI(t)
	n := cloudtest.StartNATS(t, dir, 1)
	relayThrough(t, dir, n[0].URL(), n[0].URL())
}

// A 3-node NATS cluster: a publisher with the gateway certificate and two
// broker URLs loses its node and carries on through another; a persistent
// QoS 1 subscriber on a third node gets every acknowledged message. This is
// the cluster half of the failover goal, with paho's own failover in place
// of the gateway relay (gateway/internal/relay cannot be imported from here;
// see cloudtest for the helpers a relay test can use).
// clusterDeliveryWait bounds the wait for the acknowledged messages in
// TestNATSClusterFailover.
const clusterDeliveryWait = 90 * time.Second

func TestNATSClusterFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	dir := testPKI(t)
	nodes := cloudtest.StartNATS(t, dir, 3)

	in := newInbox()
	o := paho.NewClientOptions().AddBroker(nodes[2].URL()).SetClientID("monitor").SetTLSConfig(gatewayTLS(t, dir)).
		SetCleanSession(false).SetAutoReconnect(true).SetProtocolVersion(4).SetDefaultPublishHandler(in.handler).
		SetConnectTimeout(waitFor)
	s := paho.NewClient(o)
	// The MQTT sessions of NATS live in JetStream: the first CONNECTs fail
	// until the cluster has elected its leaders.
	testutil.Eventually(t, waitFor, "subscriber connected", func() bool {
		tok := s.Connect()
		return tok.WaitTimeout(waitFor) && tok.Error() == nil
	})
	t.Cleanup(func() { s.Disconnect(100) })
	wait(t, s.Subscribe("telemetry/site1/#", 1, in.handler), "subscribe")

	o = paho.NewClientOptions().AddBroker(nodes[0].URL()).AddBroker(nodes[1].URL()).SetClientID("gw1").
		SetTLSConfig(gatewayTLS(t, dir)).SetCleanSession(true).SetAutoReconnect(true).SetConnectRetry(true).
		SetProtocolVersion(4).SetConnectTimeout(5 * time.Second).SetMaxReconnectInterval(time.Second)
	gw := paho.NewClient(o)
	testutil.Eventually(t, waitFor, "gateway connected", func() bool {
		tok := gw.Connect()
		return tok.WaitTimeout(waitFor) && tok.Error() == nil
	})
	t.Cleanup(func() { gw.Disconnect(100) })

	const n = 40
	acked := map[string]bool{}
	publish := func(i int) {
		// Resend until acknowledged, as the relay does with its queue.
		for attempt := 0; attempt < 60; attempt++ {
			tok := gw.Publish("telemetry/site1/dev-00001/spo2", 1, false, fmt.Sprint(i))
			if tok.WaitTimeout(2*time.Second) && tok.Error() == nil {
				acked[fmt.Sprint(i)] = true
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("message %d never acknowledged", i)
	}
	for i := 0; i < n/2; i++ {
		publish(i)
	}
	nodes[0].Stop()
	for i := n / 2; i < n; i++ {
		publish(i)
	}
	// Wait on the condition, not on a per-message deadline: after the node
	// is lost, the cluster may take a while (a JetStream leader election on
	// a loaded machine) before it delivers again.
	got := map[string]bool{}
	deadline := time.After(clusterDeliveryWait)
	for len(got) < len(acked) {
		select {
		case m := <-in.ch:
			got[string(m.Payload())] = true
		case <-deadline:
			t.Fatalf("%d of %d acknowledged messages delivered within %s", len(got), len(acked), clusterDeliveryWait)
		}
	}
	for k := range acked {
		if !got[k] {
			t.Fatalf("acknowledged message %s lost", k)
		}
	}
}

func splitAddr(t *testing.T, addr string) (string, string) {
	t.Helper()
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		t.Fatalf("bad address %q", addr)
	}
	return addr[:i], addr[i+1:]
}
