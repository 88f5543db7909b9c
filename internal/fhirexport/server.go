package fhirexport

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// server posts transaction Bundles to a FHIR server.
type server struct {
	url       string
	tokenFile string // where the token is read from, "" for none
	client    *http.Client

	mu    sync.Mutex
	token string // bearer token, "" for none; never logged
}

// newServer reads the CA file and the token file of c (the token again
// after each 401).
func newServer(c Config) (*server, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.ServerCA != "" {
		b, err := os.ReadFile(c.ServerCA)
		if err != nil {
			return nil, fmt.Errorf("fhir server CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("fhir server CA: no PEM certificate in %s", c.ServerCA)
		}
		tc.RootCAs = pool
	}
	s := &server{url: c.Server, client: &http.Client{Timeout: c.Timeout,
		Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 4,
			TLSHandshakeTimeout: c.Timeout, ResponseHeaderTimeout: c.Timeout},
		CheckRedirect: refuseRedirect}}
	if c.ServerTokenFile != "" {
		s.tokenFile = c.ServerTokenFile
		tok, err := readToken(c.ServerTokenFile)
		if err != nil {
			return nil, err
		}
		s.token = tok
	}
	return s, nil
}

// readToken reads a bearer token file: one line.
func readToken(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("fhir server token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" || strings.ContainsAny(tok, "\r\n") {
		return "", fmt.Errorf("fhir server token: %s holds no token on one line", file)
	}
	return tok, nil
}

// reloadToken reads the token file again after the server answered 401: a
// token renewed in the file is taken without a restart. A file that cannot
// be read keeps the token in use.
func (s *server) reloadToken() error {
	if s.tokenFile == "" {
		return nil
	}
	tok, err := readToken(s.tokenFile)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.token = tok
	return nil
}

// refuseRedirect follows no redirect: a POST redirected with 301, 302 or
// 303 comes again as a GET without the Bundle (whose 200 would count the
// records as stored), and one to http:// carries the bearer token in the
// clear. The error is one to retry: the records stay unacknowledged and
// the log says where the server points, for fhir.server.
func refuseRedirect(req *http.Request, _ []*http.Request) error {
	return fmt.Errorf("fhir server redirects to %s://%s%s: not followed (set fhir.server to the URL that takes the POST)",
		req.URL.Scheme, req.URL.Host, req.URL.Path)
}

// refusedError is a server's answer that another attempt cannot change:
// a 4xx about the Bundle (400, 409, 412, 413, 422, ...), which is wrong
// for this server.
type refusedError struct {
	status int
	detail string
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("fhir server refused the bundle: %d %s", e.status, e.detail)
}

// maxResponse bounds what is read of a server's answer.
const maxResponse = 1 << 20

// post sends one transaction Bundle. A nil error means the transaction
// succeeded (2xx); a *refusedError means it never will; any other error
// may pass: 5xx, 408, 429, a timeout or a connection error, and the
// answers about access rather than the Bundle, 401 and 403 (a token
// expired, revoked or not yet granted; read again from its file after a
// 401). Those refuse every record alike, so acknowledging them would drop
// every record until an operator noticed: they are retried until the
// server's answer changes.
func (s *server) post(ctx context.Context, bundle []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(bundle))
	if err != nil {
		return &refusedError{detail: err.Error()}
	}
	req.Header.Set("Content-Type", "application/fhir+json")
	req.Header.Set("Accept", "application/fhir+json")
	s.mu.Lock()
	token := s.token
	s.mu.Unlock()
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("post to fhir server: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusUnauthorized:
		if err := s.reloadToken(); err != nil {
			return fmt.Errorf("fhir server: %s (%s); reading the token again: %w", resp.Status, outcome(body), err)
		}
		return fmt.Errorf("fhir server: %s (%s): check fhir.server_token_file", resp.Status, outcome(body))
	case resp.StatusCode == http.StatusForbidden:
		return fmt.Errorf("fhir server: %s (%s): the token lacks a permission", resp.Status, outcome(body))
	case resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return fmt.Errorf("fhir server: %s", resp.Status)
	}
	return &refusedError{status: resp.StatusCode, detail: outcome(body)}
}

// outcome is the first diagnostics of an OperationOutcome, clipped, or the
// body's start: what a log line says of a refusal.
func outcome(body []byte) string {
	var oo struct {
		Issue []struct {
			Diagnostics string `json:"diagnostics"`
		} `json:"issue"`
	}
	s := string(body)
	if json.Unmarshal(body, &oo) == nil && len(oo.Issue) > 0 && oo.Issue[0].Diagnostics != "" {
		s = oo.Issue[0].Diagnostics
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// merge joins the transaction Bundles of several records into one, each
// entry once: a device's Device entry, or a record delivered twice, is the
// same entry (same fullUrl, same bytes) in each of them.
func merge(bundles [][]byte) ([]byte, error) {
	if len(bundles) == 1 {
		return bundles[0], nil
	}
	var entries []json.RawMessage
	seen := map[string]bool{}
	for _, b := range bundles {
		var bun struct {
			Entry []json.RawMessage `json:"entry"`
		}
		if err := json.Unmarshal(b, &bun); err != nil {
			return nil, fmt.Errorf("merge bundles: %w", err)
		}
		for _, e := range bun.Entry {
			var id struct {
				FullURL string `json:"fullUrl"`
			}
			if err := json.Unmarshal(e, &id); err != nil {
				return nil, fmt.Errorf("merge bundles: %w", err)
			}
			if seen[id.FullURL] {
				continue
			}
			seen[id.FullURL] = true
			entries = append(entries, e)
		}
	}
	return json.Marshal(struct {
		ResourceType string            `json:"resourceType"`
		Type         string            `json:"type"`
		Entry        []json.RawMessage `json:"entry"`
	}{"Bundle", "transaction", entries})
}

// backoff is exponential backoff with jitter: each wait is drawn from the
// upper half of a window that doubles from 100 ms (or max, when smaller)
// up to max.
type backoff struct {
	window, max time.Duration
}

func newBackoff(max time.Duration) *backoff {
	return &backoff{window: min(100*time.Millisecond, max), max: max}
}

// wait sleeps for the next interval; false when ctx ended first.
func (b *backoff) wait(ctx context.Context) bool {
	d := b.window/2 + rand.N(b.window/2+1)
	b.window = min(2*b.window, b.max)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// errStopped: the exporter stopped while a record was unfinished; it is
// not acknowledged and comes again.
var errStopped = errors.New("exporter stopped")
