package cloud

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// WatchOptions are what [Watch] connects with.
type WatchOptions struct {
	PKI        string // PKI directory: ca.crt, device-ca.crt, devices/; "" with CA
	CA         string // ca.crt alone, when PKI is "": records are checked with the published chains only
	Token      string // app JWT
	Site       string // the site whose telemetry is watched
	URL        string // broker URL: ssl://, mqtts:// or wss://
	ClientID   string // MQTT client ID; "": random
	Persistent bool   // keep the session (and its queue) while away
	Dedup      int    // message IDs remembered to drop duplicates
}

// Watch is the reference consumer (`broker watch`): it subscribes as an app
// to certs/{site}/# and telemetry/{site}/#, checks each published
// certificate chain, drops duplicates, checks every record's device
// signature (with a PKI directory, a record signed with a certificate on
// crl.pem or issuing-crl.pem, reloaded on change, is shown as rejected) and
// prints a readable line per message to out until ctx is done.
// Connection events (subscribed, refused, lost) go to events.
func Watch(ctx context.Context, o WatchOptions, out, events io.Writer) error {
	w, caFile, err := newWatcher(o)
	if err != nil {
		return err
	}
	w.WatchRevocations(ctx)
	tc, err := pki.ClientTLS(caFile, "", "")
	if err != nil {
		return err
	}
	id := o.ClientID
	if id == "" {
		r := make([]byte, 6)
		_, _ = rand.Read(r)
		id = "watch-" + hex.EncodeToString(r)
	}
	brokerURL := strings.Replace(o.URL, "mqtts://", "ssl://", 1)
	lines := make(chan string, 1024)
	handler := lineHandler(ctx, w, lines)
	filters := []string{"certs/" + o.Site + "/#", "telemetry/" + o.Site + "/#"} // chains first
	opts := paho.NewClientOptions().AddBroker(brokerURL).SetClientID(id).SetTLSConfig(tc).
		SetUsername("app").SetPassword(o.Token).SetCleanSession(!o.Persistent).SetOrderMatters(true).
		SetAutoReconnect(true).SetMaxReconnectInterval(10 * time.Second).SetConnectTimeout(10 * time.Second).
		SetDefaultPublishHandler(handler).
		SetOnConnectHandler(func(c paho.Client) {
			// (Re)subscribe on every connect, the chains first so that
			// their retained messages come before the records; the SUBACK
			// tells whether the token allows the site.
			for _, filter := range filters {
				t := c.Subscribe(filter, 1, handler)
				if !t.WaitTimeout(10*time.Second) || t.Error() != nil {
					return
				}
				if code := t.(*paho.SubscribeToken).Result()[filter]; code >= 0x80 {
					fmt.Fprintf(events, "watch: subscription to %s refused (is %s in the token's sites?)\n", filter, o.Site)
					return
				}
				fmt.Fprintf(events, "watch: subscribed to %s at %s\n", filter, brokerURL)
			}
		}).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			fmt.Fprintf(events, "watch: connection lost: %v (reconnecting)\n", err)
		})
	c := paho.NewClient(opts)
	t := c.Connect()
	if !t.WaitTimeout(15 * time.Second) {
		return errors.New("watch: connect timed out")
	}
	if err := t.Error(); err != nil {
		return fmt.Errorf("watch: connect %s: %w", brokerURL, err)
	}
	defer c.Disconnect(250)
	for {
		select {
		case <-ctx.Done():
			return nil
		case l := <-lines:
			fmt.Fprintln(out, l)
		}
	}
}

// newWatcher is the watcher of o, with the PKI directory or ca.crt alone,
// and the ca.crt the connection trusts.
func newWatcher(o WatchOptions) (*Watcher, string, error) {
	if o.PKI == "" {
		if o.CA == "" {
			return nil, "", errors.New("watch: a PKI directory or a ca.crt is required")
		}
		w, err := NewChainWatcher(o.CA, o.Dedup)
		return w, o.CA, err
	}
	w, err := NewWatcher(o.PKI, o.Dedup)
	return w, filepath.Join(o.PKI, pki.FileCA), err
}

// lineHandler turns each message into a line on lines: a certificate
// chain's verdict, or a record as the watcher checked it (duplicates make
// no line).
func lineHandler(ctx context.Context, w *Watcher, lines chan<- string) paho.MessageHandler {
	return func(_ paho.Client, m paho.Message) {
		var line string
		if strings.HasPrefix(m.Topic(), "certs/") {
			line = time.Now().Format("15:04:05") + " " + w.HandleChain(m.Topic(), m.Payload()).Line()
		} else {
			s, err := w.Handle(m.Topic(), m.Payload())
			switch {
			case err != nil:
				line = fmt.Sprintf("%s %s: undecodable message: %v", time.Now().Format("15:04:05"), m.Topic(), err)
			case s.Dup:
				return
			default:
				line = s.Line(nil)
			}
		}
		select {
		case lines <- line:
		case <-ctx.Done():
		}
	}
}
