package sim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	mqtt3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/vitalgate/vitalgate/internal/jobmsg"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// maxTracked bounds the record IDs a watcher remembers (each a few dozen
// bytes): far above what one scenario's fleets send.
const maxTracked = 5_000_000

// watcher reads what reaches the cloud for a scenario: the records of its
// devices (by unique ID) and the site's security events by verdict.
type watcher struct {
	c        mqtt3.Client
	opts     *mqtt3.ClientOptions
	prefixes map[string]bool // device prefixes whose records are counted

	mu        sync.Mutex
	seen      map[string]bool
	delivered map[string]uint64 // unique records by device prefix
	events    map[string]uint64 // this phase's events by verdict
	jobs      map[string]*jobmsg.Summary
	firmware  map[string][2]string // model and firmware by device, from the inventory
	badMsgs   uint64
}

// watch connects to the cloud as an app and subscribes to the site's
// telemetry (and security events when events is set, the jobs' summaries
// and the inventory when rollouts is).
func watch(cl *Cloud, pkiDir string, prefixes map[string]bool, events, rollouts bool) (*watcher, error) {
	tok := cl.Token
	if tok == "" {
		if cl.TokenFile == "" {
			return nil, errors.New("cloud: no token_file")
		}
		b, err := os.ReadFile(cl.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("cloud: %w", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	ca := cl.CA
	if ca == "" {
		ca = filepath.Join(pkiDir, pki.FileCA)
	}
	tc, err := pki.ClientTLS(ca, "", "")
	if err != nil {
		return nil, fmt.Errorf("cloud: %w", err)
	}
	w := &watcher{prefixes: prefixes, seen: map[string]bool{}, delivered: map[string]uint64{}, events: map[string]uint64{},
		jobs: map[string]*jobmsg.Summary{}, firmware: map[string][2]string{}}
	id := fmt.Sprintf("devicesim-%d", time.Now().UnixNano())
	o := mqtt3.NewClientOptions().AddBroker(cl.URL).SetClientID(id).SetUsername("devicesim").SetPassword(tok).
		SetTLSConfig(tc).SetCleanSession(false).SetAutoReconnect(true).SetMaxReconnectInterval(time.Second).
		SetConnectTimeout(10 * time.Second).SetOrderMatters(false)
	topics := map[string]byte{"telemetry/" + cl.Site + "/#": 1}
	if events {
		topics["security/"+cl.Site+"/#"] = 1
	}
	if rollouts {
		for _, t := range rolloutTopics(cl.Site) {
			topics[t] = 1
		}
	}
	// Subscribed again on every connection: the cloud may go away in a scenario.
	o.SetOnConnectHandler(func(c mqtt3.Client) { c.SubscribeMultiple(topics, w.handle) })
	// A persistent session: what the cloud relays while the watcher
	// reconnects (after an outage) waits for it. close ends the session.
	w.c, w.opts = mqtt3.NewClient(o), o
	if t := w.c.Connect(); !t.WaitTimeout(15*time.Second) || t.Error() != nil {
		w.c.Disconnect(0)
		return nil, fmt.Errorf("cloud: connect to %s: %v", cl.URL, errOr(t.Error(), "timeout"))
	}
	t := w.c.SubscribeMultiple(topics, w.handle)
	if !t.WaitTimeout(15*time.Second) || t.Error() != nil {
		w.c.Disconnect(0)
		return nil, fmt.Errorf("cloud: subscribe: %v", errOr(t.Error(), "timeout"))
	}
	for f, code := range t.(*mqtt3.SubscribeToken).Result() {
		if code >= 0x80 {
			w.c.Disconnect(0)
			return nil, fmt.Errorf("cloud: the token may not read %s (security events and rollouts need the role operator)", f)
		}
	}
	return w, nil
}

func errOr(err error, s string) error {
	if err != nil {
		return err
	}
	return errors.New(s)
}

func (w *watcher) handle(_ mqtt3.Client, m mqtt3.Message) {
	if strings.HasPrefix(m.Topic(), "jobs/") || strings.HasPrefix(m.Topic(), "inventory/") {
		w.handleRollout(m.Topic(), m.Payload())
		return
	}
	if strings.HasPrefix(m.Topic(), "security/") {
		var ev struct {
			Verdict string `json:"verdict"`
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if json.Unmarshal(m.Payload(), &ev) != nil || ev.Verdict == "" {
			w.badMsgs++
			return
		}
		w.events[ev.Verdict]++
		return
	}
	msg, err := wire.Decode(m.Payload())
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.badMsgs++
		return
	}
	dev, _, _ := strings.Cut(msg.ID, ":")
	p := prefixOf(dev)
	if !w.prefixes[p] || w.seen[msg.ID] || len(w.seen) >= maxTracked {
		return
	}
	w.seen[msg.ID] = true
	w.delivered[p]++
}

// prefixOf is the fleet prefix of a device ID: {prefix}-{number}.
func prefixOf(dev string) string {
	if i := strings.LastIndexByte(dev, '-'); i > 0 {
		return dev[:i]
	}
	return dev
}

// deliveredOf sums the unique records delivered from the given prefixes.
func (w *watcher) deliveredOf(prefixes []string) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var n uint64
	for _, p := range prefixes {
		n += w.delivered[p]
	}
	return n
}

// takeEvents returns this phase's events and starts the next phase's.
func (w *watcher) takeEvents() map[string]uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	e := w.events
	w.events = map[string]uint64{}
	return e
}

// settle waits until cond holds, for at most d.
func settle(ctx context.Context, d time.Duration, cond func() bool) {
	deadline := time.Now().Add(d)
	for !cond() && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// close disconnects and ends the persistent session (a clean connect with
// the same client ID), so runs do not leave sessions behind at the cloud.
func (w *watcher) close() {
	w.c.Disconnect(100)
	c := mqtt3.NewClient(w.opts.SetCleanSession(true).SetAutoReconnect(false).SetOnConnectHandler(nil))
	if t := c.Connect(); t.WaitTimeout(5*time.Second) && t.Error() == nil {
		c.Disconnect(100)
	}
}
