// Package conform checks a device against the device protocol
// (docs/protocol.md): it listens as a gateway would, lets one device connect
// and publish, drives it through the situations the protocol defines (a
// connection lost before a PUBACK, a rejection, a quota answer), and judges
// each rule on what the device did. The result is a pass/fail list a device
// maker can attach to a submission; `devicesim conform` is its command.
//
// The script, once a device has connected: its first DisconnectAfter
// messages are acknowledged; the next one loses its connection before the
// PUBACK (the device must reconnect and resend it, identical); with MQTT 5,
// the next new message is answered 0x97 quota exceeded (the device must keep
// it and send it again later) and the one after 0x83 (it must not be sent
// again). Every other message is judged by the gateway's own checks and
// answered as the gateway would.
package conform

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Status of a rule.
const (
	Pass      = "pass"
	Fail      = "fail"
	NotTested = "not_tested"
)

// Rule IDs, in the order of the report.
const (
	RuleTLS        = "tls_client_certificate"
	RuleDeviceID   = "device_id"
	RuleClientID   = "client_id"
	RuleNoWill     = "no_will"
	RuleTopic      = "topic"
	RuleQoS        = "qos"
	RuleRetain     = "no_retain"
	RuleCOSE       = "cose_sign1"
	RuleIdentity   = "record_dev"
	RuleRecord     = "record_schema"
	RuleTime       = "record_time"
	RuleSeq        = "seq_increasing"
	RuleReconnect  = "reconnect"
	RuleResend     = "resend_unacknowledged"
	RuleQuota      = "quota_kept_and_resent"
	RuleDropReject = "rejected_not_resent"
)

// rules describes each rule, in report order.
var rules = []struct{ id, title string }{
	{RuleTLS, "mutual TLS with a certificate issued by the device CA, within its validity"},
	{RuleDeviceID, "the certificate's common name is a valid device ID"},
	{RuleClientID, "the MQTT client ID equals the device ID"},
	{RuleNoWill, "CONNECT carries no will"},
	{RuleTopic, "publishes only to devices/{id}/telemetry and devices/{id}/status"},
	{RuleQoS, "telemetry is published with QoS 1 (the gateway takes QoS 0, but without an acknowledgement or a delivery guarantee)"},
	{RuleRetain, "no message is retained"},
	{RuleCOSE, "COSE_Sign1 by the rules: alg in the protected header matching the key, kid = device ID if present, signature verifies"},
	{RuleIdentity, "the record's dev equals the certificate's device ID"},
	{RuleRecord, "the record decodes strictly and its kind, codes, units and ranges are valid"},
	{RuleTime, "ts is neither more than 5 minutes ahead nor older than 7 days"},
	{RuleSeq, "seq strictly increases across messages and reconnects (but for the identical resend of an unacknowledged message)"},
	{RuleReconnect, "after a lost connection the device reconnects"},
	{RuleResend, "a message whose PUBACK was lost is sent again, byte for byte"},
	{RuleQuota, "MQTT 5: a message answered 0x97 (quota exceeded) is kept and sent again later"},
	{RuleDropReject, "MQTT 5: a message answered 0x83 is dropped, not sent again"},
}

// Result is one rule's outcome.
type Result struct {
	Rule     string `json:"rule"`
	Title    string `json:"title"`
	Status   string `json:"status"`
	Checked  int    `json:"checked"`            // messages or connections the rule was checked on
	Evidence string `json:"evidence,omitempty"` // the first violation, or why it was not tested
}

// Report is what a conformance run found.
type Report struct {
	Device   string    `json:"device"`
	MQTT     byte      `json:"mqtt"` // protocol version of the device's connections: 4 (3.1.1) or 5
	Key      string    `json:"key"`
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	Messages int       `json:"messages"` // PUBLISH packets received
	Results  []Result  `json:"results"`
}

// Passed reports whether no rule failed.
func (r *Report) Passed() bool {
	for _, x := range r.Results {
		if x.Status == Fail {
			return false
		}
	}
	return true
}

// Result returns the outcome of one rule.
func (r *Report) Result(rule string) Result {
	for _, x := range r.Results {
		if x.Rule == rule {
			return x
		}
	}
	return Result{Rule: rule, Status: NotTested}
}

// ErrNoDevice is returned when no device connected before the run ended.
var ErrNoDevice = errors.New("no device connected")

// tally collects the rules' observations.
type tally struct {
	mu       sync.Mutex
	checked  map[string]int
	failed   map[string]string // first violation
	notes    map[string]string // why not tested
	passedAt map[string]bool   // script rules that were met
}

func newTally() *tally {
	return &tally{checked: map[string]int{}, failed: map[string]string{}, notes: map[string]string{}, passedAt: map[string]bool{}}
}

// check records one observation of rule: ok, or a violation described by
// the format.
func (t *tally) check(rule string, ok bool, format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.checked[rule]++
	if !ok {
		if _, seen := t.failed[rule]; !seen {
			t.failed[rule] = fmt.Sprintf(format, args...)
		}
	}
}

// met records that a script rule's condition was seen.
func (t *tally) met(rule string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.checked[rule]++
	t.passedAt[rule] = true
}

// results is every rule's outcome; script rules (reconnect, resend, quota,
// rejected) pass only when their condition was seen.
func (t *tally) results(scripted map[string]string) []Result {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Result
	for _, r := range rules {
		res := Result{Rule: r.id, Title: r.title, Checked: t.checked[r.id]}
		why, isScript := scripted[r.id]
		switch {
		case t.failed[r.id] != "":
			res.Status, res.Evidence = Fail, t.failed[r.id]
		case isScript && !t.passedAt[r.id] && why != "":
			res.Status, res.Evidence = Fail, why
		case t.notes[r.id] != "":
			res.Status, res.Evidence = NotTested, t.notes[r.id]
		case res.Checked == 0:
			res.Status, res.Evidence = NotTested, "not exercised in this run"
		default:
			res.Status = Pass
		}
		out = append(out, res)
	}
	return out
}

func (t *tally) note(rule, why string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.notes[rule] = why
}

// keyName names a certificate's key type.
func keyName(c *x509.Certificate) string {
	switch c.PublicKeyAlgorithm {
	case x509.ECDSA:
		return "ECDSA P-256"
	case x509.Ed25519:
		return "Ed25519"
	}
	return c.PublicKeyAlgorithm.String()
}

// tlsRequireAny: the checker verifies the chain itself, to report why.
const tlsRequireAny = tls.RequireAnyClientCert
