package fleet

import (
	"bytes"
	"crypto/ed25519"
	"crypto/tls"
	"log/slog"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/envelope"
	"github.com/vitalgate/vitalgate/internal/estclient"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// TestSwitchIdentity: a renewed certificate is taken only once nothing is
// in flight on the old connection, and the records waiting in the buffer
// are then signed again with the new key (the gateway checks a record with
// the key of the connection's certificate); attack messages are left as
// they are. The full renewal against the gateway is TestRenewalLosesNothing
// in gateway/internal/server.
func TestSwitchIdentity(t *testing.T) {
	oldKey, err := estclient.NewKey(pki.P256)
	if err != nil {
		t.Fatal(err)
	}
	newKey, err := estclient.NewKey(pki.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	f := &fleet{cfg: Default().withDefaults(), log: slog.New(slog.DiscardHandler)}
	dev, err := NewDevice("dev-00001", "spo2", 1)
	if err != nil {
		t.Fatal(err)
	}
	next := identity{cert: tls.Certificate{Certificate: [][]byte{[]byte("new")}}, key: newKey, renewAt: time.Now().Add(time.Hour)}
	r := &runner{f: f, id: dev.ID, dev: dev, key: oldKey, tls: &tls.Config{}, inflight: map[uint64]*entry{},
		rn: &renewal{timer: time.NewTimer(time.Hour), next: &next}}
	defer r.rn.stop()
	now := time.Now()
	for i := range 3 {
		if err := r.generate(now.Add(time.Duration(i) * time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	attack := &entry{topic: telemetryTopic(dev.ID), payload: []byte("crafted"), attack: true}
	r.add(attack)
	flying := r.pending[0]
	r.pending = r.pending[1:]
	r.inflight[flying.id] = flying

	if switched, err := r.switchIdentity(); switched || err != nil {
		t.Fatalf("switched with a record in flight (%v, %v)", switched, err)
	}
	if r.key != oldKey || !r.rn.switching() {
		t.Fatal("identity changed while a record was in flight")
	}
	delete(r.inflight, flying.id) // its PUBACK came
	if switched, err := r.switchIdentity(); !switched || err != nil {
		t.Fatalf("no switch with nothing in flight (%v, %v)", switched, err)
	}
	if !bytes.Equal(r.key.(ed25519.PrivateKey), newKey.(ed25519.PrivateKey)) || r.rn.switching() || len(r.tls.Certificates) != 1 || string(r.tls.Certificates[0].Certificate[0]) != "new" {
		t.Fatal("the new key and certificate are not the device's")
	}
	if r.tls.ClientSessionCache == nil {
		t.Error("no fresh TLS session cache")
	}
	vNew, err := envelope.NewVerifier(newKey.Public(), dev.ID)
	if err != nil {
		t.Fatal(err)
	}
	vOld, err := envelope.NewVerifier(oldKey.Public(), dev.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.pending) != 3 {
		t.Fatalf("%d entries waiting, want 2 records and the attack message", len(r.pending))
	}
	for _, e := range r.pending[:2] {
		if _, err := vNew.Verify(e.payload); err != nil {
			t.Errorf("buffered record seq %d: not signed with the new key: %v", e.rec.Seq, err)
		}
	}
	if _, err := vOld.Verify(flying.payload); err != nil {
		t.Errorf("the record answered on the old connection was signed again: %v", err)
	}
	if !bytes.Equal(r.pending[2].payload, []byte("crafted")) {
		t.Error("attack message changed")
	}
	if !r.rn.timer.Stop() {
		t.Error("the next renewal is not scheduled")
	}
}
