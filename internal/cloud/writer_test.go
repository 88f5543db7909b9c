package cloud

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/vitalgate/vitalgate/internal/testutil"
)

// The test in this file covers the writer patch to mochi in third_party/mochi
// (see its PATCHES.md): a client's write goroutine runs only while packets
// wait for it.

// writers counts mochi's client write goroutines alive now.
func writers() int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "mochi-mqtt/server/v2.(*Client).drainOutbound") ||
			strings.Contains(g, "mochi-mqtt/server/v2.(*Client).WriteLoop") {
			n++
		}
	}
	return n
}

// TestWriterOnlyWhilePending: idle clients have no write goroutine (mochi
// kept one per client), and messages still reach every subscriber, in order,
// over rounds that each start and end the writers.
func TestWriterOnlyWhilePending(t *testing.T) {
	s := mqtt.New(&mqtt.Options{InlineClient: true})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
	if err := s.AddListener(tcp); err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	const clients, rounds, perRound = 20, 5, 30
	var mu sync.Mutex
	got := make([][]int, clients)
	var wg sync.WaitGroup
	wg.Add(clients * rounds * perRound)
	for i := range clients {
		o := paho.NewClientOptions().AddBroker("tcp://" + tcp.Address()).SetClientID(fmt.Sprintf("c%d", i)).
			SetOrderMatters(true).SetAutoReconnect(false)
		c := paho.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect: %v", tok.Error())
		}
		defer c.Disconnect(0)
		tok := c.Subscribe("cmd/all", 1, func(_ paho.Client, m paho.Message) {
			var n int
			fmt.Sscan(string(m.Payload()), &n)
			mu.Lock()
			got[i] = append(got[i], n)
			mu.Unlock()
			wg.Done()
		})
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe: %v", tok.Error())
		}
	}
	if n := writers(); n != 0 {
		t.Fatalf("%d write goroutines for %d idle clients, want none", n, clients)
	}
	for r := range rounds {
		for k := range perRound {
			if err := s.Publish("cmd/all", []byte(fmt.Sprint(r*perRound+k)), false, 1); err != nil {
				t.Fatal(err)
			}
		}
		testutil.Eventually(t, waitFor, fmt.Sprintf("the write goroutines to end after round %d", r), func() bool { return writers() == 0 })
	}
	wg.Wait()
	for i, seq := range got {
		for k, n := range seq {
			if n != k {
				t.Fatalf("client %d: message %d arrived as number %d: %v", i, n, k, seq)
			}
		}
	}
}
