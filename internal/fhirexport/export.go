package fhirexport

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vitalgate/vitalgate/internal/fhir"
	"github.com/vitalgate/vitalgate/internal/wire"
)

// Results of one record, the result label of vitalgate_fhir_exported_total.
const (
	resultVerified   = "verified"       // exported with a Provenance
	resultUnverified = "unverified"     // exported without one: no device certificate yet
	resultRejected   = "rejected"       // not exported: bad signature, altered or revoked
	resultMalformed  = "malformed"      // not exported: not a cloud message, or not mappable
	resultRefused    = "server_refused" // published (if configured) but refused by the server for good
)

// record is one delivery on its way.
type record struct {
	m      paho.Message
	site   string
	dev    string
	bundle []byte
	result string
}

// export exports a batch: each record's Bundle is made, published and
// POSTed, then every record is acknowledged. It returns errStopped, with
// nothing more acknowledged, when ctx ends first.
func (e *Exporter) export(ctx context.Context, batch []paho.Message) error {
	var todo []*record
	for _, m := range batch {
		r := e.prepare(m)
		if r.bundle == nil {
			e.done(r)
			continue
		}
		todo = append(todo, r)
	}
	if len(todo) == 0 {
		return nil
	}
	if e.cfg.Publish {
		for _, r := range todo {
			if e.o.MaxPublish > 0 && len(r.bundle) > e.o.MaxPublish {
				e.m.unpublished.Inc()
				e.log.Warn("bundle larger than the broker's packet size: not published on fhir/", "device", r.dev,
					"site", r.site, "bytes", len(r.bundle), "max", e.o.MaxPublish)
				continue
			}
			if err := e.publish(ctx, r); err != nil {
				return err
			}
		}
	}
	if e.srv != nil {
		if err := e.post(ctx, todo); err != nil {
			return err
		}
	}
	for _, r := range todo {
		e.done(r)
	}
	e.log.Debug("exported", "records", len(todo), "client", e.o.Conn.ClientID)
	return nil
}

// prepare decodes and checks a delivery and makes its Bundle; a record
// that is not to be exported has no bundle and its result set.
func (e *Exporter) prepare(pm paho.Message) *record {
	r := &record{m: pm}
	lv := strings.Split(pm.Topic(), "/")
	if len(lv) != 4 {
		r.result = resultMalformed
		e.log.Warn("not a telemetry topic", "topic", clip(pm.Topic()))
		return r
	}
	r.site = lv[1]
	m, err := wire.Decode(pm.Payload())
	if err != nil {
		r.result = resultMalformed
		e.log.Warn("undecodable message: not exported", "topic", clip(pm.Topic()), "error", err)
		return r
	}
	r.dev = m.Rec.Dev
	v, detail := e.o.Checker.Check(pm.Topic(), m)
	if v == Rejected {
		r.result = resultRejected
		e.log.Warn("record rejected: not exported", "id", clip(m.ID), "site", r.site, "detail", detail)
		return r
	}
	patient := e.cfg.patient(r.site, r.dev)
	if patient == "" {
		e.noPatient(r.site, r.dev)
	}
	b, err := fhir.Bundle(fhir.Input{Msg: m, Verified: v == Verified, Patient: patient})
	if err != nil {
		r.result = resultMalformed
		e.log.Warn("record not mappable to FHIR: not exported", "id", clip(m.ID), "site", r.site, "error", err)
		return r
	}
	r.bundle, r.result = b, resultVerified
	if v != Verified {
		r.result = resultUnverified
	}
	return r
}

// noPatient counts a record exported without a subject, and logs its
// device once and reports it once in a security event.
func (e *Exporter) noPatient(site, dev string) {
	e.m.noPatient.Inc()
	key := site + "/" + dev
	if _, ok := e.warned.Load(key); ok {
		return
	}
	e.wmu.Lock()
	defer e.wmu.Unlock()
	if e.nWarned >= maxWarned {
		return
	}
	if _, loaded := e.warned.LoadOrStore(key, struct{}{}); !loaded {
		e.nWarned++
		e.log.Warn("device not in the site's patient map: exported without a subject", "site", site, "device", dev)
		e.event(site, dev, VerdictNoPatient, "device not in the site's patient map: exported without a subject")
	}
}

// VerdictNoPatient is the verdict of the security event that reports a
// device exported without a subject (the site's patient map lacks it).
const VerdictNoPatient = "no_patient"

// EventTopic is the topic of the exporter's security events for site:
// security/{site}/{client ID}, the client ID in the place of a gateway's
// ID. Only an exporter that publishes (Config.Publish) sends them.
func EventTopic(site, clientID string) string { return "security/" + site + "/" + clientID }

// event publishes a security event (QoS 1, not retained) without waiting
// for its acknowledgement: the export does not wait on monitoring. One
// published while the connection is down is kept only while paho is
// reconnecting; the log line and the metric have it in any case.
func (e *Exporter) event(site, dev, verdict, detail string) {
	if !e.cfg.Publish || e.client == nil || strings.ContainsAny(e.o.Conn.ClientID, "/+#") {
		return
	}
	b, err := json.Marshal(wire.Event{V: 1, TS: time.Now().UnixMilli(), GW: e.o.Conn.ClientID, Dev: dev,
		Verdict: verdict, Detail: detail})
	if err != nil {
		return
	}
	e.client.Publish(EventTopic(site, e.o.Conn.ClientID), 1, false, b)
}

// publish publishes r's Bundle on fhir/{site}/{device}, retrying until
// the broker acknowledges it.
func (e *Exporter) publish(ctx context.Context, r *record) error {
	topic := "fhir/" + r.site + "/" + r.dev
	bo := newBackoff(e.cfg.MaxBackoff)
	for {
		t := e.client.Publish(topic, 1, false, r.bundle)
		ok := t.WaitTimeout(e.cfg.Timeout)
		if ok && t.Error() == nil {
			return nil
		}
		e.m.retries.WithLabelValues("publish").Inc()
		e.log.Warn("publish failed (retrying)", "topic", topic, "timed_out", !ok, "error", t.Error())
		if !bo.wait(ctx) {
			return errStopped
		}
	}
}

// post POSTs the records' Bundles as one transaction, retrying failures
// that may pass. When the server refuses a Bundle of several records for
// good, each record is posted alone, so that one bad record does not hold
// back the others; a record refused alone is marked so.
func (e *Exporter) post(ctx context.Context, rs []*record) error {
	bundles := make([][]byte, len(rs))
	for i, r := range rs {
		bundles[i] = r.bundle
	}
	body, err := merge(bundles)
	if err != nil {
		return err // made from our own bundles: cannot happen
	}
	bo := newBackoff(e.cfg.MaxBackoff)
	for {
		err := e.srv.post(ctx, body)
		var refused *refusedError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &refused) && len(rs) > 1:
			e.log.Warn("fhir server refused a batch: posting its records one by one", "records", len(rs), "error", err)
			for _, r := range rs {
				if err := e.post(ctx, []*record{r}); err != nil {
					return err
				}
			}
			return nil
		case errors.As(err, &refused):
			rs[0].result = resultRefused
			e.log.Error("fhir server refused a record for good: acknowledged without it", "site", rs[0].site,
				"device", rs[0].dev, "error", err)
			return nil
		}
		e.m.retries.WithLabelValues("server").Inc()
		e.log.Warn("fhir server unavailable (retrying)", "records", len(rs), "error", err)
		if !bo.wait(ctx) {
			return errStopped
		}
	}
}

// done acknowledges a record and counts its result.
func (e *Exporter) done(r *record) {
	r.m.Ack()
	e.m.exported.WithLabelValues(r.result).Inc()
}

// clip shortens a peer's string for a log line.
func clip(s string) string {
	if len(s) > 128 {
		return s[:128] + "..."
	}
	return s
}
