package pki

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/tls"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/vitalgate/vitalgate/internal/testutil"
)

func TestRevoke(t *testing.T) {
	dir := newPKI(t, InitOptions{})
	for _, id := range []string{"a", "b", "c"} {
		if err := IssueDevice(dir, id, P256, 0); err != nil {
			t.Fatal(err)
		}
	}
	devCA := mustCert(t, filepath.Join(dir, FileDeviceCA))
	rev, err := NewRevocations(filepath.Join(dir, FileCRL), devCA)
	if err != nil {
		t.Fatal(err)
	}
	serial := func(id string) *big.Int { c, _ := DevicePaths(dir, id); return mustCert(t, c).SerialNumber }
	if rev.Len() != 0 || rev.Number().Int64() != 1 || rev.IsRevoked(serial("a")) || rev.IsRevoked(nil) {
		t.Fatalf("fresh CRL: len %d number %v", rev.Len(), rev.Number())
	}
	tests := []struct {
		name       string
		id         string
		wantErr    bool
		wantNumber int64
	}{
		{"revoke a", "a", false, 2},
		{"revoke b", "b", false, 3},
		{"revoke a again is a no-op", "a", false, 3},
		{"unknown device", "zz", true, 3},
		{"invalid id", "../ca", true, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Revoke(dir, tt.id)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Revoke error = %v, wantErr %v", err, tt.wantErr)
			}
			if err := rev.Reload(); err != nil {
				t.Fatal(err)
			}
			if got := rev.Number().Int64(); got != tt.wantNumber {
				t.Errorf("CRL number %d, want %d", got, tt.wantNumber)
			}
			if !tt.wantErr && !rev.IsRevoked(serial(tt.id)) {
				t.Errorf("%s not revoked after Reload", tt.id)
			}
		})
	}
	if rev.IsRevoked(serial("c")) || rev.Len() != 2 {
		t.Fatalf("c revoked %v, len %d", rev.IsRevoked(serial("c")), rev.Len())
	}

	// A CRL signed by another CA is refused, and a failed reload keeps the list in force.
	other := newPKI(t, InitOptions{})
	if _, err := NewRevocations(filepath.Join(other, FileCRL), devCA); err == nil {
		t.Fatal("accepted a CRL of another device CA")
	}
	if _, err := NewRevocations(filepath.Join(dir, FileCRL), mustCert(t, filepath.Join(dir, FileGatewayCA))); err == nil {
		t.Fatal("accepted the device CRL against the gateway CA")
	}
	crl, _ := os.ReadFile(filepath.Join(dir, FileCRL))
	good := append([]byte(nil), crl...)
	if err := writeFile(filepath.Join(dir, FileCRL), []byte("garbage"), 0o644, false); err != nil {
		t.Fatal(err)
	}
	if err := rev.Reload(); err == nil || rev.Err() == nil {
		t.Fatal("reloaded garbage")
	}
	if !rev.IsRevoked(serial("a")) {
		t.Fatal("failed reload dropped the list")
	}

	// Watch picks up a change of the file without Reload.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); rev.Watch(ctx, 20*time.Millisecond) }()
	if err := writeFile(filepath.Join(dir, FileCRL), good, 0o644, false); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "Watch to recover the good CRL", func() bool { return rev.Err() == nil })
	if err := Revoke(dir, "c"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "Watch to load the revocation of c", func() bool { return rev.IsRevoked(serial("c")) })
	cancel()
	<-done
}

// handshake runs one TLS connection against srv and reports the client's and the server's errors.
func handshake(t *testing.T, srv *tls.Config, cli *tls.Config) (clientErr, serverErr error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			serr <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if err := c.(*tls.Conn).Handshake(); err != nil {
			serr <- err
			return
		}
		_, err = c.Write([]byte("ok"))
		serr <- err
	}()
	cli = cli.Clone()
	cli.ServerName = "127.0.0.1"
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", ln.Addr().String(), cli)
	if err == nil {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		var buf [2]byte
		_, err = io.ReadFull(c, buf[:]) // TLS 1.3: the server's verdict on our certificate arrives after the handshake
		c.Close()
	}
	return err, <-serr
}

func TestServerTLS(t *testing.T) {
	for _, alg := range []KeyAlg{P256, Ed25519} {
		t.Run(string(alg), func(t *testing.T) {
			dir := newPKI(t, InitOptions{Key: alg})
			p := func(n string) string { return filepath.Join(dir, n) }
			for _, id := range []string{"good", "bad"} {
				if err := IssueDevice(dir, id, alg, 0); err != nil {
					t.Fatal(err)
				}
			}
			if err := Revoke(dir, "bad"); err != nil {
				t.Fatal(err)
			}
			rev, err := NewRevocations(p(FileCRL), mustCert(t, p(FileDeviceCA)))
			if err != nil {
				t.Fatal(err)
			}
			srv, err := ServerTLS(p(FileGateway), p(FileGatewayKey), mustPool(t, p(FileDeviceCA)), rev)
			if err != nil {
				t.Fatal(err)
			}
			if srv.MinVersion != tls.VersionTLS12 || srv.ClientAuth != tls.RequireAndVerifyClientCert || srv.SessionTicketsDisabled {
				t.Fatalf("server config: min %x auth %v tickets off %v", srv.MinVersion, srv.ClientAuth, srv.SessionTicketsDisabled)
			}
			client := func(cert, key string) *tls.Config {
				c, err := ClientTLS(p(FileCA), cert, key)
				if err != nil {
					t.Fatal(err)
				}
				return c
			}
			goodCrt, goodKey := DevicePaths(dir, "good")
			badCrt, badKey := DevicePaths(dir, "bad")
			tests := []struct {
				name       string
				cli        *tls.Config
				wantErr    bool
				serverSays string
			}{
				{"valid device", client(goodCrt, goodKey), false, ""},
				{"revoked device", client(badCrt, badKey), true, "revoked"},
				{"no client certificate", client("", ""), true, "certificate"},
				{"gateway client certificate", client(p(FileGatewayClient), p(FileGatewayClientKey)), true, "unknown authority"},
				{"valid device over TLS 1.2", func() *tls.Config { c := client(goodCrt, goodKey); c.MaxVersion = tls.VersionTLS12; return c }(), false, ""},
				{"revoked device over TLS 1.2", func() *tls.Config { c := client(badCrt, badKey); c.MaxVersion = tls.VersionTLS12; return c }(), true, "revoked"},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					cerr, serr := handshake(t, srv, tt.cli)
					if (cerr != nil) != tt.wantErr || (serr != nil) != tt.wantErr {
						t.Fatalf("client error %v, server error %v, wantErr %v", cerr, serr, tt.wantErr)
					}
					if serr != nil && !strings.Contains(serr.Error(), tt.serverSays) {
						t.Errorf("server error %q does not say %q", serr, tt.serverSays)
					}
				})
			}

			// Revoking a device that has a resumable session still refuses it.
			cache := tls.NewLRUClientSessionCache(4)
			cli := client(goodCrt, goodKey)
			cli.ClientSessionCache = cache
			resumed := false
			cli.VerifyConnection = func(cs tls.ConnectionState) error { resumed = cs.DidResume; return nil }
			for range 2 {
				if cerr, serr := handshake(t, srv, cli); cerr != nil || serr != nil {
					t.Fatal(cerr, serr)
				}
			}
			if !resumed {
				t.Fatal("second handshake did not resume: session tickets off?")
			}
			if err := Revoke(dir, "good"); err != nil {
				t.Fatal(err)
			}
			if err := rev.Reload(); err != nil {
				t.Fatal(err)
			}
			if _, serr := handshake(t, srv, cli); serr == nil || !strings.Contains(serr.Error(), "revoked") {
				t.Fatalf("resumed revoked device: server error %v", serr)
			}
		})
	}
}

// TestServerTLSReload replaces the server's key pair on disk and waits for new handshakes to see it.
func TestServerTLSReload(t *testing.T) {
	dir := newPKI(t, InitOptions{})
	p := func(n string) string { return filepath.Join(dir, n) }
	srv, err := ServerTLS(p(FileGateway), p(FileGatewayKey), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ClientTLS(p(FileCA), "", "")
	if err != nil {
		t.Fatal(err)
	}
	served := func() *big.Int {
		cli := cli.Clone()
		var got *big.Int
		cli.VerifyConnection = func(cs tls.ConnectionState) error { got = cs.PeerCertificates[0].SerialNumber; return nil }
		if cerr, serr := handshake(t, srv, cli); cerr != nil || serr != nil {
			t.Fatal(cerr, serr)
		}
		return got
	}
	first := served()
	// Swap in the broker's pair under the gateway's file names (both are server certificates of the same root).
	for _, f := range [][2]string{{FileBrokerKey, FileGatewayKey}, {FileBroker, FileGateway}} {
		b, err := os.ReadFile(p(f[0]))
		if err != nil {
			t.Fatal(err)
		}
		if err := writeFile(p(f[1]), b, 0o600, false); err != nil {
			t.Fatal(err)
		}
	}
	want := mustCert(t, p(FileBroker)).SerialNumber
	if got := served(); got.Cmp(want) != 0 || got.Cmp(first) == 0 {
		t.Fatalf("served serial %x after the swap, want %x", got, want)
	}
}

func TestMintToken(t *testing.T) {
	for _, tc := range []struct {
		alg     KeyAlg
		wantAlg string
	}{{P256, "ES256"}, {Ed25519, "EdDSA"}} {
		t.Run(string(tc.alg), func(t *testing.T) {
			dir := newPKI(t, InitOptions{Key: tc.alg})
			pub, err := LoadTokenKey(filepath.Join(dir, FileAppTokenPub))
			if err != nil {
				t.Fatal(err)
			}
			tests := []struct {
				name    string
				sub     string
				sites   []string
				ttl     time.Duration
				wantErr bool
			}{
				{"one site", "nurse-app", []string{"site1"}, time.Hour, false},
				{"two sites", "dashboard", []string{"site1", "site2"}, time.Minute, false},
				{"no sites", "x", nil, time.Hour, true},
				{"wildcard site", "x", []string{"#"}, time.Hour, true},
				{"empty subject", "", []string{"site1"}, time.Hour, true},
				{"zero ttl", "x", []string{"site1"}, 0, true},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					tok, err := MintToken(dir, tt.sub, tt.sites, tt.ttl)
					if (err != nil) != tt.wantErr {
						t.Fatalf("MintToken error = %v, wantErr %v", err, tt.wantErr)
					}
					if err != nil {
						return
					}
					// Check with jwt/v5 directly, as a cloud broker would.
					var claims TokenClaims
					parsed, err := jwt.ParseWithClaims(tok, &claims, func(*jwt.Token) (any, error) { return pub, nil },
						jwt.WithValidMethods([]string{tc.wantAlg}), jwt.WithIssuer(TokenIssuer),
						jwt.WithAudience(TokenAudience), jwt.WithExpirationRequired())
					if err != nil {
						t.Fatal(err)
					}
					if parsed.Method.Alg() != tc.wantAlg || parsed.Header["alg"] != tc.wantAlg {
						t.Errorf("alg %v, want %s", parsed.Header["alg"], tc.wantAlg)
					}
					if claims.Subject != tt.sub || strings.Join(claims.Sites, ",") != strings.Join(tt.sites, ",") ||
						claims.IssuedAt == nil || claims.ExpiresAt.Sub(claims.IssuedAt.Time) != tt.ttl {
						t.Errorf("claims %+v", claims)
					}
					if len(claims.ID) != 32 || strings.Trim(claims.ID, "0123456789abcdef") != "" {
						t.Errorf("jti %q, want 32 lowercase hex digits", claims.ID)
					}
					if again, _ := MintToken(dir, tt.sub, tt.sites, tt.ttl); again == tok {
						t.Error("two tokens minted alike: the jti is not fresh")
					}
					if _, err := VerifyToken(pub, tok); err != nil {
						t.Errorf("VerifyToken: %v", err)
					}
					// The other key type's algorithm, another deployment's key, or a tampered token fail.
					otherDir := newPKI(t, InitOptions{Key: map[KeyAlg]KeyAlg{P256: Ed25519, Ed25519: P256}[tc.alg]})
					otherPub, _ := LoadTokenKey(filepath.Join(otherDir, FileAppTokenPub))
					if _, err := VerifyToken(otherPub, tok); err == nil {
						t.Error("verified with another key type")
					}
					if _, err := VerifyToken(pub, tok[:len(tok)-4]+"AAAA"); err == nil {
						t.Error("verified a tampered token")
					}
				})
			}
			switch pub.(type) {
			case *ecdsa.PublicKey:
				if tc.alg != P256 {
					t.Error("P-256 public key for", tc.alg)
				}
			case ed25519.PublicKey:
				if tc.alg != Ed25519 {
					t.Error("Ed25519 public key for", tc.alg)
				}
			}
		})
	}
	if _, err := MintToken(t.TempDir(), "x", []string{"s"}, time.Hour); err == nil {
		t.Fatal("minted without a key")
	}
}
