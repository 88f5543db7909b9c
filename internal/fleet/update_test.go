package fleet

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"io"
	"log"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/telemetry"
	"github.com/vitalgate/vitalgate/internal/update"
)

// firmwareServer is a static HTTPS server of images at /firmware/{sha256}
// that requires a device certificate (device CA), serves Range requests
// (http.ServeContent), and cuts the first full download of each image
// halfway, so that a device must resume.
type firmwareServer struct {
	addr   string
	mu     sync.Mutex
	images map[string][]byte // by path
	cut    map[string]bool   // paths already cut once
	ranges []string          // Range headers received
	peers  []string          // client certificate CNs
}

func startFirmwareServer(t *testing.T, dir string) *firmwareServer {
	t.Helper()
	fs := &firmwareServer{images: map[string][]byte{}, cut: map[string]bool{}}
	pool, err := pki.LoadPool(filepath.Join(dir, pki.FileDeviceCA))
	if err != nil {
		t.Fatal(err)
	}
	tc, err := pki.ServerTLS(filepath.Join(dir, pki.FileGateway), filepath.Join(dir, pki.FileGatewayKey), pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tc)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(fs.serve), ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	fs.addr = ln.Addr().String()
	return fs
}

// add serves image under the path of digest (its own SHA-256 if nil).
func (fs *firmwareServer) add(image, digest []byte) string {
	if digest == nil {
		sum := sha256.Sum256(image)
		digest = sum[:]
	}
	p := "/firmware/" + hex.EncodeToString(digest)
	fs.mu.Lock()
	fs.images[p] = image
	fs.mu.Unlock()
	return p
}

func (fs *firmwareServer) serve(w http.ResponseWriter, r *http.Request) {
	fs.mu.Lock()
	img, ok := fs.images[r.URL.Path]
	cut := ok && !fs.cut[r.URL.Path] && r.Header.Get("Range") == ""
	fs.cut[r.URL.Path] = fs.cut[r.URL.Path] || cut
	if rg := r.Header.Get("Range"); rg != "" {
		fs.ranges = append(fs.ranges, rg)
	}
	fs.peers = append(fs.peers, r.TLS.PeerCertificates[0].Subject.CommonName)
	fs.mu.Unlock()
	switch {
	case !ok:
		http.NotFound(w, r)
	case cut:
		w.Header().Set("Content-Length", strconv.Itoa(len(img)))
		_, _ = w.Write(img[:len(img)/2])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // the connection drops mid-transfer
	default:
		http.ServeContent(w, r, "image.bin", time.Time{}, bytes.NewReader(img))
	}
}

// updateEnv is one simulated device on a stand-in broker, with the vendor
// key and a firmware server.
type updateEnv struct {
	t    *testing.T
	dir  string
	s    *standIn
	fw   *firmwareServer
	key  crypto.Signer // update-signing.key
	id   string
	stop func() (Report, error)
	cfg  Config
}

func newUpdateEnv(t *testing.T, attack string) *updateEnv {
	t.Helper()
	dir := newPKI(t)
	if err := pki.UpdateKeys(dir, pki.P256); err != nil {
		t.Fatal(err)
	}
	key, err := pki.LoadKey(filepath.Join(dir, pki.FileUpdateSigningKey))
	if err != nil {
		t.Fatal(err)
	}
	e := &updateEnv{t: t, dir: dir, s: startStandIn(t, dir, ""), fw: startFirmwareServer(t, dir), key: key}
	e.cfg = testConfig(dir, e.s.addr)
	e.cfg.Devices, e.cfg.Rate, e.cfg.Kinds = 1, 5, []string{"spo2"}
	e.cfg.Updates, e.cfg.HTTPS, e.cfg.State = true, e.fw.addr, t.TempDir()
	if attack != "" {
		e.cfg.Attack, e.cfg.Attackers = attack, 1
	}
	e.start()
	return e
}

// start runs the fleet and waits for the device's status at connect.
func (e *updateEnv) start() {
	e.t.Helper()
	_, e.stop = runFleet(e.t, e.cfg)
	waitFor(e.t, "the status record at connect", 10*time.Second, func() bool {
		e.s.mu.Lock()
		defer e.s.mu.Unlock()
		for id, sts := range e.s.statuses {
			if len(sts) > 0 {
				e.id = id
				return true
			}
		}
		return false
	})
}

// manifest is a valid manifest of image for the device's model, signed
// with the vendor key; mod changes it before signing.
func (e *updateEnv) manifest(image []byte, seq uint64, mod func(*update.Manifest)) []byte {
	e.t.Helper()
	sum := sha256.Sum256(image)
	m := &update.Manifest{V: 1, Vendor: "VitalGate", Model: ModelOf("spo2"), Version: "1.1.0", Seq: seq,
		Digest: sum[:], Size: uint64(len(image)), NotAfter: time.Now().Add(time.Hour).UnixMilli()}
	if mod != nil {
		mod(m)
	}
	b, err := update.Sign(e.key, m)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// command publishes an update command to the device through the broker.
func (e *updateEnv) command(job string, manifest []byte, url string) {
	e.t.Helper()
	b, err := EncodeCommand(&Command{V: 1, Job: job, Manifest: manifest, URL: url})
	if err != nil {
		e.t.Fatal(err)
	}
	e.publish(b)
}

func (e *updateEnv) publish(b []byte) {
	e.t.Helper()
	if err := e.s.server.Publish("devices/"+e.id+"/cmd/update", b, false, 1); err != nil {
		e.t.Fatal(err)
	}
}

// states are the states the device reported for job, in order.
func (e *updateEnv) states(job string) (states []string, last telemetry.Status) {
	for _, st := range e.s.statusesOf(e.id) {
		if st.Job != nil && *st.Job == job && st.State != nil {
			if len(states) == 0 || states[len(states)-1] != *st.State {
				states = append(states, *st.State)
			}
			last = st
		}
	}
	return states, last
}

// final waits for the final state of job and returns its states and the
// status record that reported it.
func (e *updateEnv) final(job string) ([]string, telemetry.Status) {
	e.t.Helper()
	var states []string
	var last telemetry.Status
	waitFor(e.t, "the final state of job "+job, 15*time.Second, func() bool {
		states, last = e.states(job)
		return len(states) > 0 && telemetry.Final(states[len(states)-1])
	}, func() string { return strings.Join(states, ",") })
	return states, last
}

func image(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDeviceUpdate: a device checks the manifest, downloads the image with
// its certificate (resuming the cut transfer with a Range request), checks
// it, installs, reconnects and reports succeeded with the new firmware,
// which it keeps across a restart; a repeat of the command gets the same
// final state, never a second install.
func TestDeviceUpdate(t *testing.T) {
	e := newUpdateEnv(t, "")
	first := e.s.statusesOf(e.id)[0]
	if first.Model != "acme-oxi-1" || first.FW != FactoryFirmware || first.FWSeq != 0 || first.Job != nil {
		t.Fatalf("status at connect %+v", first)
	}
	img := image(t, 300<<10)
	url := e.fw.add(img, nil)
	e.command("job-1", e.manifest(img, 1, nil), url)
	states, last := e.final("job-1")
	if strings.Join(states, ",") != "downloading,installing,succeeded" {
		t.Fatalf("states %v", states)
	}
	if last.FW != "1.1.0" || last.FWSeq != 1 {
		t.Fatalf("succeeded reported with fw %s seq %d", last.FW, last.FWSeq)
	}
	e.fw.mu.Lock()
	ranges, peers := append([]string(nil), e.fw.ranges...), append([]string(nil), e.fw.peers...)
	e.fw.mu.Unlock()
	if len(ranges) == 0 || ranges[0] == "bytes=0-" || !strings.HasPrefix(ranges[0], "bytes=") {
		t.Fatalf("no resume after the cut: Range headers %q", ranges)
	}
	for _, p := range peers {
		if p != e.id {
			t.Fatalf("downloaded with the certificate of %q", p)
		}
	}
	// The gateway sends the command again until it sees the final state.
	n := len(e.s.statusesOf(e.id))
	e.command("job-1", e.manifest(img, 1, nil), url)
	waitFor(t, "the repeat answered", 10*time.Second, func() bool { return len(e.s.statusesOf(e.id)) > n })
	if states, last := e.states("job-1"); states[len(states)-1] != "succeeded" || last.FW != "1.1.0" {
		t.Fatalf("after a repeat: %v %s", states, last.FW)
	}
	// Restart: the installed firmware is kept in the state directory.
	if _, err := e.stop(); err != nil {
		t.Fatal(err)
	}
	before := len(e.s.statusesOf(e.id))
	e.start()
	waitFor(t, "the status at the new connect", 10*time.Second, func() bool { return len(e.s.statusesOf(e.id)) > before })
	if st := e.s.statusesOf(e.id)[before]; st.FW != "1.1.0" || st.FWSeq != 1 {
		t.Fatalf("after a restart: fw %s seq %d", st.FW, st.FWSeq)
	}
}

// TestDeviceRefusesUpdates: each bad command or image is refused by the
// device with its reason, and never installed.
func TestDeviceRefusesUpdates(t *testing.T) {
	e := newUpdateEnv(t, "")
	img := image(t, 64<<10)
	url := e.fw.add(img, nil)
	other, err := pki.LoadKey(filepath.Join(e.dir, pki.FileGatewayKey)) // not the vendor's key
	if err != nil {
		t.Fatal(err)
	}
	corrupt := append(bytes.Clone(img[:len(img)-1]), img[len(img)-1]^1)
	sum := sha256.Sum256(img)
	corruptURL := e.fw.add(corrupt, nil) // one bit off the image the manifest names
	cases := []struct {
		job, state, reason string
		manifest           []byte
		url                string
	}{
		{"forged", "rejected", "forged", func() []byte {
			b, err := update.Sign(other, &update.Manifest{V: 1, Vendor: "x", Model: ModelOf("spo2"), Version: "9.0.0",
				Seq: 9, Digest: sum[:], Size: uint64(len(img)), NotAfter: time.Now().Add(time.Hour).UnixMilli()})
			if err != nil {
				t.Fatal(err)
			}
			return b
		}(), url},
		{"wrong-model", "rejected", "wrong_model", e.manifest(img, 2, func(m *update.Manifest) { m.Model = "acme-bp-1" }), url},
		{"expired", "rejected", "expired", e.manifest(img, 2, func(m *update.Manifest) { m.NotAfter = time.Now().Add(-time.Minute).UnixMilli() }), url},
		{"not-targeted", "rejected", "not_targeted", e.manifest(img, 2, func(m *update.Manifest) { m.Targets = []string{"someone-else"} }), url},
		{"tampered", "rejected", "forged", func() []byte { b := e.manifest(img, 2, nil); b[len(b)-1] ^= 1; return b }(), url},
		{"bad-url", "rejected", "malformed", e.manifest(img, 2, nil), "/etc/passwd"},
		{"corrupted", "failed", "digest", e.manifest(img, 2, nil), corruptURL},
	}
	for _, c := range cases {
		e.command(c.job, c.manifest, c.url)
		states, last := e.final(c.job)
		if got := states[len(states)-1]; got != c.state || last.Reason == nil || *last.Reason != c.reason {
			t.Errorf("%s: states %v reason %v, want %s %s", c.job, states, last.Reason, c.state, c.reason)
		}
		if last.FW != FactoryFirmware || last.FWSeq != 0 {
			t.Errorf("%s: firmware %s seq %d after a refusal", c.job, last.FW, last.FWSeq)
		}
	}
	// A good update, then its rollback.
	e.command("good", e.manifest(img, 5, nil), url)
	if states, _ := e.final("good"); states[len(states)-1] != "succeeded" {
		t.Fatalf("good update: %v", states)
	}
	e.command("rollback", e.manifest(img, 4, func(m *update.Manifest) { m.Version = "1.0.5" }), url)
	states, last := e.final("rollback")
	if states[len(states)-1] != "rejected" || *last.Reason != "rollback" || last.FWSeq != 5 {
		t.Fatalf("rollback: %v %v seq %d", states, last.Reason, last.FWSeq)
	}
	// A command that is not CBOR has no job to report on: ignored.
	e.publish([]byte("not a command"))
}

// TestFailInstall: a device in the fail_install mode downloads and checks
// the image, then reports the install failed, and keeps its firmware.
func TestFailInstall(t *testing.T) {
	e := newUpdateEnv(t, AttackFailInstall)
	img := image(t, 32<<10)
	e.command("job-f", e.manifest(img, 1, nil), e.fw.add(img, nil))
	states, last := e.final("job-f")
	if strings.Join(states, ",") != "downloading,installing,failed" || *last.Reason != "install" || last.FW != FactoryFirmware {
		t.Fatalf("fail_install: %v %v fw %s", states, last.Reason, last.FW)
	}
}
