package server

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"time"

	mqtt3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// jobWatch is an app at the cloud subscribed to the jobs and inventory
// trees of site1: it keeps the latest message of each topic, as an
// operator's dashboard would.
type jobWatch struct {
	mu     sync.Mutex
	latest map[string][]byte   // topic: latest payload
	all    map[string][][]byte // summary topic: every payload, in order
	c      mqtt3.Client
}

// jobStatus is a device's state in a job as the gateway relays it.
type jobStatus struct {
	V      int    `json:"v"`
	Job    string `json:"job"`
	Dev    string `json:"dev"`
	State  string `json:"state"`
	Reason string `json:"reason"`
	TS     int64  `json:"ts"`
}

// watchJobs connects an app with token tok (a reader's unless told) to the
// apps listener at url and subscribes jobs/site1/# and inventory/site1/#.
func (e *env) watchJobs(url, clientID, tok string) *jobWatch {
	e.t.Helper()
	tc, err := pki.ClientTLS(filepath.Join(e.pki, pki.FileCA), "", "")
	if err != nil {
		e.t.Fatal(err)
	}
	tc.ServerName = "localhost"
	w := &jobWatch{latest: map[string][]byte{}, all: map[string][][]byte{}}
	o := mqtt3.NewClientOptions().AddBroker(url).SetClientID(clientID).SetUsername(clientID).
		SetPassword(tok).SetTLSConfig(tc).SetAutoReconnect(false).SetCleanSession(true)
	w.c = mqtt3.NewClient(o)
	if t := w.c.Connect(); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		e.t.Fatalf("%s: connect: %v", clientID, t.Error())
	}
	e.t.Cleanup(func() { w.c.Disconnect(100) })
	sub := w.c.SubscribeMultiple(map[string]byte{"jobs/site1/#": 1, "inventory/site1/#": 1}, func(_ mqtt3.Client, m mqtt3.Message) {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.latest[m.Topic()] = m.Payload()
		if strings.HasSuffix(m.Topic(), "/status") && strings.HasPrefix(m.Topic(), "jobs/") && len(w.all[m.Topic()]) < 10000 {
			w.all[m.Topic()] = append(w.all[m.Topic()], m.Payload())
		}
	})
	if !sub.WaitTimeout(10*time.Second) || sub.Error() != nil {
		e.t.Fatalf("%s: subscribe: %v", clientID, sub.Error())
	}
	return w
}

// publishJob publishes a job (or an abort), retained, at QoS 1, and
// reports the error the broker's answer gave (nil: accepted).
func (w *jobWatch) publishJob(id string, job any) error {
	b, err := json.Marshal(job)
	if err != nil {
		return err
	}
	t := w.c.Publish("jobs/site1/"+id, 1, true, b)
	if !t.WaitTimeout(10 * time.Second) {
		return errors.New("no PUBACK within 10 s")
	}
	return t.Error()
}

// states counts the devices of job by their latest relayed state, and
// returns those of each state.
func (w *jobWatch) states(job string) map[string][]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	prefix := "jobs/site1/" + job + "/status/"
	out := map[string][]string{}
	for topic, p := range w.latest {
		dev, ok := strings.CutPrefix(topic, prefix)
		if !ok {
			continue
		}
		var s jobStatus
		if err := json.Unmarshal(p, &s); err != nil || s.Dev != dev || s.Job != job {
			out["invalid"] = append(out["invalid"], dev)
			continue
		}
		out[s.State] = append(out[s.State], dev)
	}
	return out
}

// summary is the job's latest relayed summary, decoded as JSON.
func (w *jobWatch) summary(job string) map[string]any {
	w.mu.Lock()
	defer w.mu.Unlock()
	var m map[string]any
	if p := w.latest["jobs/site1/"+job+"/status"]; p != nil {
		_ = json.Unmarshal(p, &m)
	}
	return m
}

// summaries are the job's summaries received, in order.
func (w *jobWatch) summaries(job string) []jobSummary {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []jobSummary
	for _, p := range w.all["jobs/site1/"+job+"/status"] {
		var s jobSummary
		if json.Unmarshal(p, &s) == nil {
			out = append(out, s)
		}
	}
	return out
}

// jobSummary is a job's summary as the gateway relays it.
type jobSummary struct {
	Wave, Waves   int
	Counts        map[string]int
	Aborted, Done bool
	Reason        string
}

// inventory is the latest retained inventory entry of dev, decoded.
func (w *jobWatch) inventory(dev string) map[string]any {
	w.mu.Lock()
	defer w.mu.Unlock()
	var m map[string]any
	if p := w.latest["inventory/site1/"+dev]; p != nil {
		_ = json.Unmarshal(p, &m)
	}
	return m
}
