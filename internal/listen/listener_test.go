package listen

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	mqtt3 "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
)

// closeUnderChurn closes a server while clients keep connecting and
// leaving on listener l, and reports whether Close returned within a
// bound far above its normal time (a deadlock otherwise).
func closeUnderChurn(t *testing.T, srv *mqtt.Server, addr func() string) bool {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				o := mqtt3.NewClientOptions().AddBroker("tcp://" + addr()).
					SetClientID(fmt.Sprintf("c%d-%d", w, i)).SetAutoReconnect(false).
					SetConnectTimeout(2 * time.Second)
				c := mqtt3.NewClient(o)
				if tok := c.Connect(); tok.WaitTimeout(3*time.Second) && tok.Error() == nil {
					c.Disconnect(0)
				}
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()
	time.Sleep(300 * time.Millisecond) // churn under way
	closed := make(chan struct{})
	go func() { srv.Close(); close(closed) }()
	select {
	case <-closed:
		return true
	case <-time.After(20 * time.Second):
		return false
	}
}

func newServer(t *testing.T) *mqtt.Server {
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	return srv
}

// The server closes while clients come and go on a Listener (plain TCP).
// mochi's own TCP listener deadlocked in Close in a benchmark run (its
// Close looks clients up under a read lock taken twice), which this churn
// does not reproduce reliably; ours must never hang.
func TestListenerCloseUnderChurn(t *testing.T) {
	for round := range 5 {
		srv := newServer(t)
		l := NewListener(srv, "devices", "127.0.0.1:0", nil, 5*time.Second)
		if err := srv.AddListener(l); err != nil {
			t.Fatal(err)
		}
		if err := srv.Serve(); err != nil {
			t.Fatal(err)
		}
		if l.Protocol() != "tcp" || l.Address() == "127.0.0.1:0" {
			t.Fatalf("protocol %q address %q", l.Protocol(), l.Address())
		}
		if !closeUnderChurn(t, srv, l.Address) {
			t.Fatalf("round %d: server Close did not return", round)
		}
	}
}
