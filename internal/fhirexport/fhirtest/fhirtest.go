// Package fhirtest is a small FHIR server stand-in for tests, over real TLS
// on a loopback port: it takes transaction Bundles at its base URL and
// applies, atomically, what the exporter's bundles use of FHIR's
// transaction semantics: conditional create (ifNoneExist on identifier),
// conditional update (PUT Type?identifier=...), PUT Type/id, and the
// resolution of urn:uuid fullUrls in references to the ids the server
// assigned or found. It can fail on purpose: answer 503, stall past the
// client's timeout, or refuse with 400. It is no FHIR server: only what
// cannot run here (a real one) is stood in for.
package fhirtest

import (
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Server is the stand-in. Its methods are safe for concurrent use.
type Server struct {
	URL    string // base URL (https)
	CAFile string // PEM file of the server's certificate, for server_ca
	Token  string // the bearer token it requires ("" : none)

	srv *httptest.Server

	mu        sync.Mutex
	resources map[string]map[string]json.RawMessage // type -> id -> resource
	byIdent   map[string]string                     // type|system|value -> id
	nextID    int
	requests  int
	fail      int           // answer 503 to this many more requests
	stall     int           // stall this many more requests ...
	stallFor  time.Duration // ... for this long
	refuse    func(bundle []byte) bool
}

// Start starts a stand-in requiring token (when not "") and stops it when
// the test ends.
func Start(t testing.TB, token string) *Server {
	t.Helper()
	s := &Server{Token: token, resources: map[string]map[string]json.RawMessage{}, byIdent: map[string]string{}}
	s.srv = httptest.NewTLSServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	s.URL = s.srv.URL + "/fhir"
	s.CAFile = filepath.Join(t.TempDir(), "fhir-ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.srv.Certificate().Raw})
	if err := os.WriteFile(s.CAFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// FailNext makes the next n requests answer 503.
func (s *Server) FailNext(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = n
}

// StallNext makes the next n requests wait d before they are handled (and
// then handled: a client that gave up retries what was applied).
func (s *Server) StallNext(n int, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stall, s.stallFor = n, d
}

// Refuse makes the server answer 400 to a Bundle for which f is true
// (nil: none).
func (s *Server) Refuse(f func(bundle []byte) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refuse = f
}

// Requests is the number of requests received.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// Resources returns the stored resources of a type, by id.
func (s *Server) Resources(typ string) map[string]json.RawMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]json.RawMessage{}
	for id, r := range s.resources[typ] {
		out[id] = r
	}
	return out
}

// Count is the number of stored resources of a type whose identifier
// system|value is ident.
func (s *Server) Count(typ, ident string) int {
	n := 0
	for _, r := range s.Resources(typ) {
		for _, id := range identifiers(r) {
			if id == ident {
				n++
			}
		}
	}
	return n
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests++
	fail := s.fail > 0
	if fail {
		s.fail--
	}
	var stall time.Duration
	if s.stall > 0 {
		s.stall--
		stall = s.stallFor
	}
	s.mu.Unlock()
	if stall > 0 {
		select {
		case <-time.After(stall):
		case <-r.Context().Done():
		}
	}
	switch {
	case s.Token != "" && r.Header.Get("Authorization") != "Bearer "+s.Token:
		outcome(w, http.StatusUnauthorized, "bearer token missing or wrong")
		return
	case fail:
		outcome(w, http.StatusServiceUnavailable, "try later")
		return
	case r.Method != http.MethodPost || r.URL.Path != "/fhir":
		outcome(w, http.StatusNotFound, "only transactions at the base URL")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
	if err != nil {
		outcome(w, http.StatusBadRequest, err.Error())
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refuse != nil && s.refuse(body) {
		outcome(w, http.StatusBadRequest, "refused on purpose")
		return
	}
	resp, err := s.transaction(body)
	if err != nil {
		outcome(w, http.StatusBadRequest, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/fhir+json")
	_ = json.NewEncoder(w).Encode(resp)
}

type entry struct {
	FullURL  string          `json:"fullUrl"`
	Resource json.RawMessage `json:"resource"`
	Request  struct {
		Method      string `json:"method"`
		URL         string `json:"url"`
		IfNoneExist string `json:"ifNoneExist"`
	} `json:"request"`
}

// transaction applies a transaction Bundle, all or nothing (the caller
// holds s.mu).
func (s *Server) transaction(body []byte) (any, error) {
	var b struct {
		ResourceType, Type string
		Entry              []entry
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return nil, err
	}
	if b.ResourceType != "Bundle" || b.Type != "transaction" {
		return nil, fmt.Errorf("not a transaction Bundle")
	}
	// First pass: the id of every entry, found or new; nothing stored yet.
	plans, refs, next, err := s.plan(b.Entry)
	if err != nil {
		return nil, err
	}
	// Second pass: references resolved, resources stored.
	var out []map[string]any
	for i, e := range b.Entry {
		p := plans[i]
		if p.store {
			res := string(e.Resource)
			for full, ref := range refs {
				res = strings.ReplaceAll(res, `"reference":"`+full+`"`, `"reference":"`+ref+`"`)
			}
			if strings.Contains(res, `"reference":"urn:uuid:`) {
				return nil, fmt.Errorf("entry %d: unresolved urn:uuid reference", i)
			}
			var m map[string]any
			_ = json.Unmarshal([]byte(res), &m)
			m["id"] = p.id
			stored, _ := json.Marshal(m)
			if s.resources[p.typ] == nil {
				s.resources[p.typ] = map[string]json.RawMessage{}
			}
			s.resources[p.typ][p.id] = stored
			for _, id := range identifiers(stored) {
				s.byIdent[p.typ+"|"+id] = p.id
			}
		}
		out = append(out, map[string]any{"response": map[string]string{"status": p.status, "location": p.typ + "/" + p.id}})
	}
	s.nextID = next
	return map[string]any{"resourceType": "Bundle", "type": "transaction-response", "entry": out}, nil
}

// plan is one entry of a transaction as the first pass decided it.
type plan struct {
	typ, id, status string
	store           bool
}

// plan finds or assigns the id of every entry (the caller holds s.mu); it
// returns the plans, the references of the fullUrls and the last id used.
func (s *Server) plan(entries []entry) ([]plan, map[string]string, int, error) {
	plans := make([]plan, len(entries))
	refs := map[string]string{}
	next := s.nextID
	for i, e := range entries {
		var rt struct{ ResourceType string }
		if err := json.Unmarshal(e.Resource, &rt); err != nil || rt.ResourceType == "" {
			return nil, nil, 0, fmt.Errorf("entry %d: no resource", i)
		}
		if _, dup := refs[e.FullURL]; dup || !strings.HasPrefix(e.FullURL, "urn:uuid:") {
			return nil, nil, 0, fmt.Errorf("entry %d: fullUrl %q repeated or not a urn:uuid", i, e.FullURL)
		}
		p := plan{typ: rt.ResourceType}
		switch {
		case e.Request.Method == "POST" && e.Request.URL == rt.ResourceType && e.Request.IfNoneExist != "":
			key, err := identQuery(rt.ResourceType, e.Request.IfNoneExist)
			if err != nil {
				return nil, nil, 0, fmt.Errorf("entry %d: %w", i, err)
			}
			if id, ok := s.byIdent[key]; ok {
				p.id, p.status = id, "200 OK"
			} else {
				next++
				p.id, p.status, p.store = fmt.Sprint(next), "201 Created", true
			}
		case e.Request.Method == "PUT" && strings.HasPrefix(e.Request.URL, rt.ResourceType+"?"):
			key, err := identQuery(rt.ResourceType, strings.TrimPrefix(e.Request.URL, rt.ResourceType+"?"))
			if err != nil {
				return nil, nil, 0, fmt.Errorf("entry %d: %w", i, err)
			}
			p.store, p.status = true, "200 OK"
			if id, ok := s.byIdent[key]; ok {
				p.id = id
			} else {
				next++
				p.id, p.status = fmt.Sprint(next), "201 Created"
			}
		case e.Request.Method == "PUT" && strings.HasPrefix(e.Request.URL, rt.ResourceType+"/"):
			p.id, p.status, p.store = strings.TrimPrefix(e.Request.URL, rt.ResourceType+"/"), "200 OK", true
		default:
			return nil, nil, 0, fmt.Errorf("entry %d: %s %s not supported", i, e.Request.Method, e.Request.URL)
		}
		plans[i] = p
		refs[e.FullURL] = p.typ + "/" + p.id
	}
	return plans, refs, next, nil
}

// identQuery reads `identifier=system|value` into the key of byIdent.
func identQuery(typ, q string) (string, error) {
	v, err := url.ParseQuery(q)
	if err != nil || len(v) != 1 || len(v["identifier"]) != 1 || !strings.Contains(v.Get("identifier"), "|") {
		return "", fmt.Errorf("search %q is not identifier=system|value", q)
	}
	return typ + "|" + v.Get("identifier"), nil
}

// identifiers are the system|value of a resource's identifiers.
func identifiers(r json.RawMessage) []string {
	var res struct {
		Identifier []struct{ System, Value string }
	}
	_ = json.Unmarshal(r, &res)
	var out []string
	for _, id := range res.Identifier {
		out = append(out, id.System+"|"+id.Value)
	}
	return out
}

func outcome(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/fhir+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"resourceType": "OperationOutcome",
		"issue": []map[string]string{{"severity": "error", "code": "processing", "diagnostics": msg}}})
}
