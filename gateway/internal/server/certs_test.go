package server

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/testutil"
)

// parseChain decodes a published chain: PEM certificates, leaf first.
func parseChain(t *testing.T, s string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	rest := []byte(s)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("trailing bytes after the PEM chain: %q", rest)
	}
	return out
}

// TestCertificateChainsPublished: a device that connects gets its chain
// (its certificate, then the device CA) retained on certs/{site}/{id} at a
// real app; a restart of the gateway does not publish it again; a renewed
// certificate is published when the device reconnects with it.
func TestCertificateChainsPublished(t *testing.T) {
	const dev, topic = "dev-00001", "certs/site1/dev-00001"
	e := newEnv(t, nil)
	e.device(dev)
	a := e.app("ssl://" + e.gw.Cloud().AppsAddr())
	c := e.mustDial5(dev)
	testutil.Eventually(t, 30*time.Second, "chain at the app", func() bool { return len(a.chainsOf(topic)) == 1 })
	first := a.chainsOf(topic)[0].pem
	chain := parseChain(t, first)
	deviceCA, err := pki.LoadCert(filepath.Join(e.pki, pki.FileDeviceCA))
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || !chain[0].Equal(e.deviceCert(dev)) || !chain[1].Equal(deviceCA) {
		t.Fatalf("chain of %d certificates, want the device's then the device CA's", len(chain))
	}
	_ = c.Disconnect(&paho5.Disconnect{})

	// Restart: the acknowledged fingerprint is on disk.
	e.gw.Close()
	if b, err := os.ReadFile(filepath.Join(e.cfg.Data, "published-certs")); err != nil || !bytes.Contains(b, []byte(dev+" ")) {
		t.Fatalf("published-certs after a stop: %q %v", b, err)
	}
	e.start()
	a = e.app("ssl://" + e.gw.Cloud().AppsAddr())
	testutil.Eventually(t, 30*time.Second, "retained chain at a new app", func() bool { return len(a.chainsOf(topic)) == 1 })
	if m := a.chainsOf(topic)[0]; !m.retained || m.pem != first {
		t.Fatalf("after restart: retained %v, same chain %v", m.retained, m.pem == first)
	}
	c = e.mustDial5(dev) // the same certificate: nothing to publish
	testutil.Eventually(t, 30*time.Second, "connection handled", func() bool { return e.gw.certs.Idle() && e.gw.relay.Retaining() == 0 })
	_ = c.Disconnect(&paho5.Disconnect{})

	// Renewal: a second certificate for the same ID.
	crt, key := pki.DevicePaths(e.pki, dev)
	if err := os.Remove(crt); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(key); err != nil {
		t.Fatal(err)
	}
	e.device(dev)
	e.mustDial5(dev)
	testutil.Eventually(t, 30*time.Second, "renewed chain at the app", func() bool { return len(a.chainsOf(topic)) >= 2 })
	got := a.chainsOf(topic)
	if len(got) != 2 || got[0].pem != first {
		t.Fatalf("app got %d chains (want the retained one, then the renewed one only)", len(got))
	}
	if renewed := parseChain(t, got[1].pem); !renewed[0].Equal(e.deviceCert(dev)) || renewed[0].Equal(chain[0]) {
		t.Fatal("the second chain is not the renewed certificate's")
	}
}
