package cloud

import (
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/vitalgate/vitalgate/internal/pki"
)

// revocationPoll is how often the broker looks at gateway-crl.pem and
// revoked-tokens for a change: a revocation closes its sessions within
// about this long (docs/operations.md#revoking-a-gateway).
const revocationPoll = 500 * time.Millisecond

// revocations are what the broker refuses besides what the TLS chain and
// the token's signature decide: gateway client certificates on
// gateway-crl.pem (the gateway CA's list) and app tokens whose jti is on
// revoked-tokens. Both are read at start and reloaded on change; a file
// that fails to load keeps the previous list in force.
type revocations struct {
	gateways *pki.Revocations
	gwPath   string
	tokPath  string
	tokens   atomic.Pointer[map[string]struct{}]

	mu          sync.Mutex  // the poller's state:
	gwFI, tokFI os.FileInfo // the files as last seen (nil: missing)
}

// loadRevocations reads gateway-crl.pem, whose signature must verify with
// gateway-ca.crt, and revoked-tokens (missing: no token revoked) from the
// PKI directory dir.
func loadRevocations(dir string) (*revocations, error) {
	gwCA, err := pki.LoadCert(filepath.Join(dir, pki.FileGatewayCA))
	if err != nil {
		return nil, fmt.Errorf("gateway CA: %w", err)
	}
	crl := filepath.Join(dir, pki.FileGatewayCRL)
	r := &revocations{gwPath: crl, tokPath: filepath.Join(dir, pki.FileRevokedTokens)}
	r.gwFI, _ = os.Stat(crl)
	if r.gateways, err = pki.NewRevocations(crl, gwCA); err != nil {
		return nil, fmt.Errorf("gateway revocation list: %w", err)
	}
	r.tokFI, _ = os.Stat(r.tokPath)
	ids, err := pki.ReadRevokedTokens(r.tokPath)
	if err != nil {
		return nil, err
	}
	r.tokens.Store(&ids)
	return r, nil
}

// gatewayRevoked reports whether a gateway certificate's serial is revoked.
func (r *revocations) gatewayRevoked(serial *big.Int) bool { return r.gateways.IsRevoked(serial) }

// tokenRevoked reports whether the token ID jti is revoked.
func (r *revocations) tokenRevoked(jti string) bool {
	_, ok := (*r.tokens.Load())[jti]
	return ok
}

// revokes reports whether the list in force revokes the connection id.
func (r *revocations) revokes(id *identity) bool {
	if id.kind == kindGateway {
		return r.gatewayRevoked(id.serial)
	}
	return r.tokenRevoked(id.jti)
}

// unchanged reports whether fi describes the same file, unchanged, as old
// (both nil: still missing).
func unchanged(old, fi os.FileInfo) bool {
	if old == nil || fi == nil {
		return old == nil && fi == nil
	}
	return os.SameFile(old, fi) && old.ModTime().Equal(fi.ModTime()) && old.Size() == fi.Size()
}

// poll reloads the files that changed since the last poll and reports
// whether a list in force changed. A failure is logged once per change of
// the file, and the previous list stays in force: a deleted file, a
// half-written one or one signed by another key never empties a list.
func (r *revocations) poll(b *Broker) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	changed := false
	if fi, _ := os.Stat(r.gwPath); !unchanged(r.gwFI, fi) {
		err := r.gateways.Reload()
		changed = r.loaded(b, "gateway revocation list", r.gwPath, err) || changed
		r.gwFI = fi
	}
	if fi, _ := os.Stat(r.tokPath); !unchanged(r.tokFI, fi) {
		ids, err := pki.ReadRevokedTokens(r.tokPath)
		if err == nil && fi == nil {
			err = errors.New("file missing")
		}
		if err == nil {
			r.tokens.Store(&ids)
		}
		changed = r.loaded(b, "revoked tokens", r.tokPath, err) || changed
		r.tokFI = fi
	}
	return changed
}

// loaded logs the outcome of a reload and reports whether a new list is in
// force.
func (r *revocations) loaded(b *Broker, what, path string, err error) bool {
	if err != nil {
		b.log.Error("reload "+what+" (keeping the previous list)", "file", path, "error", err)
		return false
	}
	b.log.Info(what+" reloaded", "file", path)
	return true
}

// revocationLoop polls the revocation files until Close and, when a list
// changed, closes the sessions it revokes.
func (b *Broker) revocationLoop() {
	t := time.NewTicker(revocationPoll)
	defer t.Stop()
	for {
		select {
		case <-b.done:
			return
		case <-t.C:
			if b.rev.poll(b) {
				b.hook.dropRevoked()
			}
		}
	}
}

// Reload reads the revocation lists that changed now, without waiting for
// the next poll, and closes the sessions they revoke (the broker's SIGHUP).
func (b *Broker) Reload() {
	if b.rev.poll(b) {
		b.hook.dropRevoked()
	}
}

// dropRevoked closes every live session the lists in force revoke:
// gateways by their certificate, apps by their token's jti (all of its
// connections, TCP and WebSocket). It returns how many it closed.
func (h *authHook) dropRevoked() int {
	type victim struct {
		cl *mqtt.Client
		id *identity
	}
	var drop []victim
	h.mu.RLock()
	for cl, id := range h.ids {
		if !id.revoked.Load() && h.b.rev.revokes(id) {
			drop = append(drop, victim{cl, id})
		}
	}
	h.mu.RUnlock()
	for _, v := range drop {
		h.closeRevoked(v.cl, v.id)
	}
	return len(drop)
}

// closeRevoked disconnects a revoked connection, once: an MQTT 5 client
// gets DISCONNECT 0x87 (not authorized), then the connection (TLS and
// TCP, or the WebSocket) is closed.
func (h *authHook) closeRevoked(cl *mqtt.Client, id *identity) {
	if id.revoked.Swap(true) {
		return
	}
	h.b.m.revokedDisconnects.WithLabelValues(id.kind).Inc()
	attrs := []any{"kind", id.kind, "name", id.name, "client", cl.ID, "remote", cl.Net.Remote, "listener", cl.Net.Listener}
	if id.kind == kindGateway {
		attrs = append(attrs, "site", id.site, "serial", fmt.Sprintf("%x", id.serial))
	} else {
		attrs = append(attrs, "jti", id.jti)
	}
	h.b.log.Warn("revoked: closing the session", attrs...)
	h.b.goroutine(func() { _ = h.b.srv.DisconnectClient(cl, packets.ErrNotAuthorized) })
}

// refuseRevoked refuses the CONNECT of a revoked app token with CONNACK
// "not authorized" (MQTT 5 0x87, MQTT 3.1.1 return code 5) and returns the
// code for OnConnect to return.
func (h *authHook) refuseRevoked(cl *mqtt.Client, sub, jti string) error {
	h.refuse(cl, kindApp, "revoked", "token revoked (its jti is on revoked-tokens)", "sub", sub, "jti", jti)
	code := packets.ErrNotAuthorized
	if cl.Properties.ProtocolVersion < 5 {
		code = packets.ErrBadUsernameOrPassword // 3.1.1: return code 5, not authorized
	}
	if err := h.b.srv.SendConnack(cl, code, false, nil); err != nil {
		return fmt.Errorf("send connack: %w", err)
	}
	return code
}
