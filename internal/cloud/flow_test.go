package cloud

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	packets5 "github.com/eclipse/paho.golang/packets"
	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/internal/testutil"
)

// The tests in this file cover the patches to mochi's in-flight handling in
// third_party/mochi (see its PATCHES.md).

// TestInflightNoRecursiveReadLock: NextImmediate took the in-flight map's
// read lock and called GetAll, which took it again; a Set (write lock)
// waiting in between locked the map for ever, and with it the client's
// PUBACK processing and every publisher delivering to it.
func TestInflightNoRecursiveReadLock(t *testing.T) {
	in := mqtt.NewInflights()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; i < 20000; i++ {
			in.NextImmediate()
			in.GetAll(true)
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; i < 20000; i++ {
			id := uint16(i%64 + 1)
			in.Set(packets.Packet{PacketID: id, Expiry: -1, FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}})
			in.Delete(id)
		}
	}()
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the in-flight map deadlocked: NextImmediate and Set did not finish")
	}
}

// app5 is an MQTT 5 app (paho.golang) that counts what it receives and
// acknowledges each message after its handler returns.
type app5 struct {
	c    *paho5.Client
	conn net.Conn
	mu   sync.Mutex
	seen map[string]int
	errs []string
}

func dialApp5(t *testing.T, b *Broker, dir, clientID, tok string, receiveMax uint16, cleanStart bool, expiry uint32) *app5 {
	t.Helper()
	conn, err := tls.Dial("tcp", b.AppsAddr(), appTLS(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	a := &app5{conn: conn, seen: map[string]int{}}
	a.c = paho5.NewClient(paho5.ClientConfig{
		Conn: packets5.NewThreadSafeConn(conn),
		OnPublishReceived: []func(paho5.PublishReceived) (bool, error){func(pr paho5.PublishReceived) (bool, error) {
			a.mu.Lock()
			a.seen[string(pr.Packet.Payload)]++
			a.mu.Unlock()
			return true, nil
		}},
		OnClientError: func(err error) {
			a.mu.Lock()
			a.errs = append(a.errs, err.Error())
			a.mu.Unlock()
		},
	})
	cp := &paho5.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: cleanStart, Password: []byte(tok), PasswordFlag: true,
		Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry}}
	if receiveMax > 0 {
		cp.Properties.ReceiveMaximum = &receiveMax
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ack, err := a.c.Connect(ctx, cp)
	if err != nil || ack.ReasonCode != 0 {
		t.Fatalf("app %s connect: %v %+v", clientID, err, ack)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return a
}

func (a *app5) subscribe(t *testing.T, filter string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	sa, err := a.c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if err != nil || len(sa.Reasons) != 1 || sa.Reasons[0] != 1 {
		t.Fatalf("subscribe %s: %v %+v", filter, err, sa)
	}
}

// distinct is the number of distinct payloads received.
func (a *app5) distinct() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.seen)
}

// gauge reads one series from the broker's /metrics.
func gauge(t *testing.T, b *Broker, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(scrape(t, b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return 0
}

// TestReceiveMaximumBurst: apps with a Receive Maximum of 1, 5 and 20 and
// one without get every message of bursts that a gateway publishes while
// they acknowledge, round after round. Before the patch the apps with a
// Receive Maximum were wedged after the first burst (mochi sent a message
// held back for quota and then forgot it, so its PUBACK freed no quota),
// and the in-flight gauge stuck above zero.
func TestReceiveMaximumBurst(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, ""))
	tok := mint(t, dir, "site1")
	var apps []*app5
	for i, rm := range []uint16{1, 5, 20, 0} {
		a := dialApp5(t, b, dir, fmt.Sprintf("app-rm%d-%d", rm, i), tok, rm, true, 0)
		a.subscribe(t, "telemetry/site1/#")
		apps = append(apps, a)
	}
	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	const rounds, burst = 3, 400
	for r := 0; r < rounds; r++ {
		var last interface{ WaitTimeout(time.Duration) bool }
		for i := 0; i < burst; i++ {
			last = gw.Publish(fmt.Sprintf("telemetry/site1/dev-%03d/spo2", i%7), 1, false, fmt.Sprintf("r%d-%d", r, i))
		}
		if !last.WaitTimeout(waitFor) {
			t.Fatalf("round %d: the broker stopped acknowledging the gateway", r)
		}
		want := (r + 1) * burst
		for i, a := range apps {
			testutil.Eventually(t, waitFor, fmt.Sprintf("round %d: app %d gets %d messages", r, i, want),
				func() bool { return a.distinct() == want })
		}
	}
	testutil.Eventually(t, waitFor, "in-flight gauge back to 0", func() bool { return gauge(t, b, "vitalgate_cloud_inflight") == 0 })
	for i, a := range apps {
		a.mu.Lock()
		if len(a.errs) > 0 {
			t.Errorf("app %d client errors: %v", i, a.errs)
		}
		a.mu.Unlock()
	}
}

// TestReceiveMaximumPersistentSession: an app with a persistent session and
// a Receive Maximum of 20 goes away while a backlog accumulates, comes back
// and gets all of it; the in-flight gauge returns to 0 and is never negative
// (mochi subtracted a taken-over session's messages twice).
func TestReceiveMaximumPersistentSession(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, t.TempDir()))
	tok := mint(t, dir, "site1")
	awayWithSession(t, b, dir, "app-persist", tok, 20)

	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	const backlog = 400
	var last interface{ WaitTimeout(time.Duration) bool }
	for i := 0; i < backlog; i++ {
		last = gw.Publish("telemetry/site1/dev-00001/spo2", 1, false, fmt.Sprintf("m%d", i))
	}
	if !last.WaitTimeout(waitFor) {
		t.Fatal("the broker stopped acknowledging the gateway")
	}
	back := dialApp5(t, b, dir, "app-persist", tok, 20, false, 3600)
	testutil.Eventually(t, waitFor, fmt.Sprintf("backlog of %d delivered after reconnect", backlog), func() bool {
		if g := gauge(t, b, "vitalgate_cloud_inflight"); g < 0 {
			t.Fatalf("in-flight gauge negative: %v", g)
		}
		return back.distinct() == backlog
	})
	testutil.Eventually(t, waitFor, "in-flight gauge back to 0", func() bool { return gauge(t, b, "vitalgate_cloud_inflight") == 0 })
	// Still delivering: a new message reaches the resumed session.
	wait(t, gw.Publish("telemetry/site1/dev-00001/spo2", 1, false, "after"), "publish after")
	testutil.Eventually(t, waitFor, "a message after the backlog delivered", func() bool { return back.distinct() == backlog+1 })
	testutil.Eventually(t, waitFor, "in-flight gauge back to 0", func() bool { return gauge(t, b, "vitalgate_cloud_inflight") == 0 })
}

// awayWithSession connects an app with a persistent session (Receive
// Maximum rm, 0: none) subscribed to site1, and drops its connection without
// DISCONNECT, so what arrives next waits in its session.
func awayWithSession(t *testing.T, b *Broker, dir, clientID, tok string, rm uint16) {
	t.Helper()
	a := dialApp5(t, b, dir, clientID, tok, rm, true, 3600)
	a.subscribe(t, "telemetry/site1/#")
	_ = a.conn.Close()
	testutil.Eventually(t, waitFor, "app's connection ended", func() bool { return gauge(t, b, `vitalgate_cloud_connections{kind="app"}`) == 0 })
}

// TestInflightPendingInOrder: messages waiting for send quota leave in the
// order they were queued, and a message taken stays in flight.
func TestInflightPendingInOrder(t *testing.T) {
	in := mqtt.NewInflights()
	// Packet IDs wrap, so the order is by arrival, not by ID.
	for _, id := range []uint16{65535, 1, 2, 7, 3} {
		in.SetPending(packets.Packet{PacketID: id})
	}
	var got []uint16
	for in.HasPending() {
		pk, ok := in.TakeNextPending()
		if !ok {
			t.Fatal("HasPending but nothing to take")
		}
		got = append(got, pk.PacketID)
	}
	if fmt.Sprint(got) != "[65535 1 2 7 3]" {
		t.Fatalf("pending order %v, want [65535 1 2 7 3]", got)
	}
	if in.Len() != 5 {
		t.Fatalf("%d in flight, want 5: a message taken awaits its PUBACK", in.Len())
	}
}

// stuckHook holds every PUBLISH on "stuck/..." until release is closed: a
// client goroutine that does not end, as the in-flight deadlock left them.
type stuckHook struct {
	mqtt.HookBase
	held, release chan struct{}
	once          sync.Once
}

func (h *stuckHook) ID() string           { return "stuck" }
func (h *stuckHook) Provides(b byte) bool { return b == mqtt.OnPublish }
func (h *stuckHook) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if strings.HasPrefix(pk.TopicName, "telemetry/site1/stuck") {
		h.once.Do(func() { close(h.held) })
		<-h.release
	}
	return pk, nil
}

// TestCloseBounded: Close returns, with an error, when a client's goroutine
// never ends; before, a SIGTERM left the broker waiting for ever.
func TestCloseBounded(t *testing.T) {
	old := shutdownTimeout
	shutdownTimeout = 500 * time.Millisecond
	t.Cleanup(func() { shutdownTimeout = old })
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, ""))
	h := &stuckHook{held: make(chan struct{}), release: make(chan struct{})}
	if err := b.srv.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	gw.Publish("telemetry/site1/stuck/x", 1, false, "p")
	select {
	case <-h.held:
	case <-time.After(waitFor):
		t.Fatal("the publish did not reach the hook")
	}
	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	select {
	case err := <-closed:
		if err == nil || !strings.Contains(err.Error(), "clients still running") {
			t.Fatalf("Close = %v, want the timeout error", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Close did not return")
	}
	close(h.release)
}

// dialAppH is dialApp5 with a handler of the test's own.
func dialAppH(t *testing.T, b *Broker, dir, clientID, tok string, receiveMax uint16, expiry uint32, h func(paho5.PublishReceived) (bool, error)) {
	t.Helper()
	conn, err := tls.Dial("tcp", b.AppsAddr(), appTLS(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	c := paho5.NewClient(paho5.ClientConfig{Conn: packets5.NewThreadSafeConn(conn),
		OnPublishReceived: []func(paho5.PublishReceived) (bool, error){h}})
	cp := &paho5.Connect{ClientID: clientID, KeepAlive: 30, Password: []byte(tok), PasswordFlag: true,
		Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry}}
	if receiveMax > 0 {
		cp.Properties.ReceiveMaximum = &receiveMax
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if ack, err := c.Connect(ctx, cp); err != nil || ack.ReasonCode != 0 {
		t.Fatalf("connect %v %+v", err, ack)
	}
	t.Cleanup(func() { _ = conn.Close() })
}

func storedInflight(t *testing.T, b *Broker) int {
	v, err := b.store.StoredInflightMessages()
	if err != nil {
		t.Fatal(err)
	}
	return len(v)
}

// TestPendingKeptInStoreAtReconnect: a persistent session's messages still
// waiting for quota after a reconnect stay in the store (the takeover's
// ClearInflights drops them from it, under the same keys, and the resend
// stores them again; before, only those resent within the Receive Maximum
// were, and a restart lost the rest).
func TestPendingKeptInStoreAtReconnect(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, t.TempDir()))
	tok := mint(t, dir, "site1")
	awayWithSession(t, b, dir, "app-p", tok, 5)
	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	const n = 20
	for i := 0; i < n; i++ {
		wait(t, gw.Publish("telemetry/site1/dev-00001/spo2", 1, false, fmt.Sprintf("m%d", i)), "pub")
	}
	testutil.Eventually(t, waitFor, "all stored", func() bool { return storedInflight(t, b) == n })
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	var mu sync.Mutex
	got := 0
	dialAppH(t, b, dir, "app-p", tok, 5, 3600, func(paho5.PublishReceived) (bool, error) {
		mu.Lock()
		got++
		mu.Unlock()
		<-block // never acknowledge
		return true, nil
	})
	testutil.Eventually(t, waitFor, "the first message delivered", func() bool { mu.Lock(); defer mu.Unlock(); return got > 0 })
	if s := storedInflight(t, b); s != n {
		t.Fatalf("store holds %d in-flight messages, want %d (none acknowledged)", s, n)
	}
}

// TestRestoredInOrder: after a restart, a session's messages are resent in
// the order they arrived (they came in the store's key order,
// "client:packet ID" as text, so 10 before 2).
func TestRestoredInOrder(t *testing.T) {
	dir := testPKI(t)
	data := t.TempDir()
	cfg := testConfig(dir, data)
	b, _ := startBroker(t, cfg)
	tok := mint(t, dir, "site1")
	awayWithSession(t, b, dir, "app-o", tok, 0)
	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	const n = 12
	for i := 0; i < n; i++ {
		wait(t, gw.Publish("telemetry/site1/dev-00001/spo2", 1, false, fmt.Sprintf("m%02d", i)), "pub")
	}
	testutil.Eventually(t, waitFor, "all stored", func() bool { return storedInflight(t, b) == n })
	gw.Disconnect(0)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b2, _ := startBroker(t, cfg)
	var mu sync.Mutex
	var order []string
	dialAppH(t, b2, dir, "app-o", tok, 0, 3600, func(pr paho5.PublishReceived) (bool, error) {
		mu.Lock()
		order = append(order, string(pr.Packet.Payload))
		mu.Unlock()
		return true, nil
	})
	testutil.Eventually(t, waitFor, "all delivered", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) == n })
	mu.Lock()
	defer mu.Unlock()
	for i, p := range order {
		if p != fmt.Sprintf("m%02d", i) {
			t.Fatalf("order after restart: %v", order)
		}
	}
}

// resendHook: at the first resend of the reconnecting session, a publisher
// delivers to the client (as the gateway's read loop can at that moment).
type resendHook struct {
	mqtt.HookBase
	armed atomic.Bool
	gw    paho.Client
}

func (h *resendHook) ID() string           { return "resend" }
func (h *resendHook) Provides(b byte) bool { return b == mqtt.OnQosPublish }
func (h *resendHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if cl.ID == "app-r" && pk.FixedHeader.Dup && h.armed.CompareAndSwap(true, false) {
		h.gw.Publish("telemetry/site1/dev-00001/spo2", 1, false, "x").WaitTimeout(waitFor)
		time.Sleep(200 * time.Millisecond)
	}
}

// TestResendWithPublisher: a publisher delivering to a session while it is
// being resumed neither overtakes the session's messages nor gets them sent
// twice, and the send quota is whole afterwards (before: "m1 m2 m0(dup)
// m2(dup) m3 x", and a unit of quota lost for the connection's life).
func TestResendWithPublisher(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, ""))
	tok := mint(t, dir, "site1")
	awayWithSession(t, b, dir, "app-r", tok, 1)
	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	h := &resendHook{gw: gw}
	if err := b.srv.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		wait(t, gw.Publish("telemetry/site1/dev-00001/spo2", 1, false, fmt.Sprintf("m%d", i)), "pub")
	}
	h.armed.Store(true)
	var mu sync.Mutex
	var order []string
	dialAppH(t, b, dir, "app-r", tok, 3, 3600, func(pr paho5.PublishReceived) (bool, error) {
		mu.Lock()
		order = append(order, fmt.Sprintf("%s(dup=%v)", pr.Packet.Payload, pr.Packet.Duplicate()))
		mu.Unlock()
		return true, nil
	})
	testutil.Eventually(t, waitFor, "in-flight gauge 0", func() bool { return gauge(t, b, "vitalgate_cloud_inflight") == 0 })
	cl, _ := b.srv.Clients.Get("app-r")
	testutil.Eventually(t, waitFor, "five deliveries", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) >= 5 })
	mu.Lock()
	t.Logf("received: %v; in flight %d, send quota %d of 3", order, cl.State.Inflight.Len(), cl.State.Inflight.SendQuota())
	if fmt.Sprint(order) != "[m0(dup=true) m1(dup=false) m2(dup=false) m3(dup=false) x(dup=false)]" || cl.State.Inflight.SendQuota() != 3 {
		t.Errorf("want m0 (sent before, DUP) to m3 once each, in order, then x, and the quota back to 3")
	}
	mu.Unlock()
}

// TestOversizedDeliveryDropped: a message over an app's Maximum Packet Size
// can never be written to it; it is dropped and counted, and gives back the
// send quota it took, so an app with a Receive Maximum of 1 goes on
// receiving (it held the quota for ever, and the app got nothing more).
func TestOversizedDeliveryDropped(t *testing.T) {
	dir := testPKI(t)
	b, _ := startBroker(t, testConfig(dir, ""))
	conn, err := tls.Dial("tcp", b.AppsAddr(), appTLS(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	var mu sync.Mutex
	var got []string
	c := paho5.NewClient(paho5.ClientConfig{Conn: packets5.NewThreadSafeConn(conn),
		OnPublishReceived: []func(paho5.PublishReceived) (bool, error){func(pr paho5.PublishReceived) (bool, error) {
			mu.Lock()
			got = append(got, string(pr.Packet.Payload))
			mu.Unlock()
			return true, nil
		}}})
	rm, maxSize, expiry := uint16(1), uint32(300), uint32(0)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ack, err := c.Connect(ctx, &paho5.Connect{ClientID: "small-app", KeepAlive: 30, CleanStart: true,
		Password: []byte(mint(t, dir, "site1")), PasswordFlag: true,
		Properties: &paho5.ConnectProperties{ReceiveMaximum: &rm, MaximumPacketSize: &maxSize, SessionExpiryInterval: &expiry}})
	if err != nil || ack.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ack)
	}
	if _, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "telemetry/site1/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	gw := pahoClient(t, "ssl://"+b.GatewayAddr(), gatewayTLS(t, dir), "gw1", "", "", true)
	wait(t, gw.Publish("telemetry/site1/dev-00001/ecg", 1, false, strings.Repeat("x", 2000)), "publish big")
	for i := 0; i < 3; i++ {
		wait(t, gw.Publish("telemetry/site1/dev-00001/spo2", 1, false, fmt.Sprintf("small-%d", i)), "publish small")
	}
	testutil.Eventually(t, waitFor, "the small messages delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return fmt.Sprint(got) == "[small-0 small-1 small-2]"
	})
	if n := gauge(t, b, `vitalgate_cloud_deliveries_dropped_total{kind="app"}`); n != 1 {
		t.Fatalf("deliveries dropped %v, want 1", n)
	}
	testutil.Eventually(t, waitFor, "in-flight gauge back to 0", func() bool { return gauge(t, b, "vitalgate_cloud_inflight") == 0 })
}
