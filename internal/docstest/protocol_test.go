// Package docstest checks the documentation against the code: the test
// vectors printed in docs/protocol.md; the commands, keys and metrics named
// in README.md and docs/operations.md; the links and anchors of every
// document and of the code's citations of them; what docs/design.md and
// docs/apps.md state that the code decides; and that nothing sends its
// reader to a file outside the repository.
package docstest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vitalgate/vitalgate/internal/envelope/testvectors"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

var update = flag.Bool("update", false, "rewrite the generated sections of the docs")

// root is the repository root (this package is internal/docstest).
func root(t *testing.T) string {
	t.Helper()
	d, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func readDoc(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root(t), name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// docVectors are the vectors docs/protocol.md prints, in order, with what
// each shows.
var docVectors = []struct{ name, what string }{
	{"valid_es256_spo2", "The spo2 record above, ES256, tagged, kid in the protected header."},
	{"valid_es256_untagged", "The same without tag 18."},
	{"valid_es256_kid_unprotected", "kid in the unprotected header instead."},
	{"valid_es256_no_kid", "No kid at all: the certificate identifies the key."},
	{"valid_eddsa_spo2", "The spo2 record, EdDSA (Ed25519), tagged, kid protected. Deterministic: reproducible from the seed."},
	{"valid_bp_with_pulse", "A blood-pressure record with the optional pulse rate (EdDSA)."},
	{"valid_spo2_abnormal_70", "SpO2 70 %: clinically alarming, physically possible, so accepted."},
	{"envelope_not_cbor", "Not CBOR at all."},
	{"envelope_wrong_tag_17", "Tag 17 (COSE_Mac0) instead of 18."},
	{"envelope_detached_payload", "Payload nil (detached)."},
	{"envelope_crit", "A crit header parameter (label 2)."},
	{"envelope_kid_text", "kid as a text string instead of bytes."},
	{"record_duplicate_key", "The record has the key \"seq\" twice."},
	{"record_indefinite_map", "The record is an indefinite-length map."},
	{"record_unknown_key", "The record has a key the format does not define."},
	{"bad_signature_es256_flipped_signature_byte", "One bit of the signature flipped."},
	{"bad_signature_es256_wrong_key", "Signed by another P-256 key."},
	{"bad_signature_es256_kid_mismatch", "kid names another device."},
	{"bad_signature_es256_alg_missing", "No alg in the protected header."},
	{"bad_signature_eddsa_alg_with_p256_key", "An EdDSA message checked against a P-256 certificate."},
	{"identity_mismatch_dev", "Correctly signed, but \"dev\" names another device."},
	{"schema_spo2_101", "SpO2 101 %: outside what an instrument can measure."},
	{"schema_unknown_kind", "A kind the schemas do not define."},
	{"schema_missing_required", "spo2 without its pulse rate."},
	{"schema_wrong_unit", "Temperature in [degF] instead of Cel."},
	{"future_6_minutes", "ts 6 minutes ahead of the gateway clock."},
	{"stale_8_days", "ts 8 days old (max_age 7 days)."},
}

var keyNames = map[string]string{testvectors.P256: "P-256", testvectors.Ed25519: "Ed25519"}

const (
	beginMark = "<!-- vectors:begin"
	endMark   = "<!-- vectors:end -->"
)

// renderVectors is the generated section of docs/protocol.md.
func renderVectors(t *testing.T) string {
	t.Helper()
	byName := map[string]testvectors.Case{}
	for _, c := range testvectors.Cases() {
		byName[c.Name] = c
	}
	var b strings.Builder
	b.WriteString("\nTest device public keys (`dev-00001`):\n\n")
	p := testvectors.PublicKey(testvectors.P256).(*ecdsa.PublicKey)
	pb, err := p.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "```pubkey p256\n%s```\n\n", wrapHex(pb))
	e := testvectors.PublicKey(testvectors.Ed25519).(ed25519.PublicKey)
	fmt.Fprintf(&b, "```pubkey ed25519\n%s```\n", wrapHex(e))
	for _, v := range docVectors {
		c, ok := byName[v.name]
		if !ok {
			t.Fatalf("docVectors: no test vector %s", v.name)
		}
		fmt.Fprintf(&b, "\n#### `%s`\n\n%s\n\n- key: %s (`%s`)\n- verdict: `%s`\n", c.Name, v.what, keyNames[c.Key], c.Key, c.Verdict)
		if c.Detail != "" {
			fmt.Fprintf(&b, "- detail contains: `%s`\n", c.Detail)
		}
		fmt.Fprintf(&b, "- %d bytes\n\n```hex\n%s```\n", len(c.Msg), wrapHex(c.Msg))
	}
	b.WriteString("\n")
	return b.String()
}

func wrapHex(b []byte) string {
	h := hex.EncodeToString(b)
	var s strings.Builder
	for len(h) > 64 {
		s.WriteString(h[:64] + "\n")
		h = h[64:]
	}
	s.WriteString(h + "\n")
	return s.String()
}

// section splits doc around the generated vectors section.
func section(t *testing.T, doc string) (before, body, after string) {
	t.Helper()
	i := strings.Index(doc, beginMark)
	j := strings.Index(doc, endMark)
	if i < 0 || j < i {
		t.Fatalf("docs/protocol.md lacks the %q ... %q markers", beginMark, endMark)
	}
	k := i + strings.Index(doc[i:], "-->") + len("-->")
	return doc[:k], doc[k:j], doc[j:]
}

// TestProtocolVectors checks that the vectors section of docs/protocol.md is
// exactly what the shared table produces now (-update rewrites it).
func TestProtocolVectors(t *testing.T) {
	path := filepath.Join(root(t), "docs", "protocol.md")
	doc := readDoc(t, "docs/protocol.md")
	before, body, after := section(t, doc)
	want := renderVectors(t)
	if *update {
		if err := os.WriteFile(path, []byte(before+want+after), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if body != want {
		t.Fatal("docs/protocol.md test vectors differ from internal/envelope/testvectors: run go test ./internal/docstest -run TestProtocolVectors -update")
	}
}

// docVector is one vector as parsed from the page.
type docVector struct {
	name, key, verdict, detail string
	msg                        []byte
}

var (
	headRE    = regexp.MustCompile("^#### `([a-z0-9_]+)`$")
	keyRE     = regexp.MustCompile("^- key: .*\\(`([a-z0-9]+)`\\)$")
	verdictRE = regexp.MustCompile("^- verdict: `([a-z_]+)`$")
	detailRE  = regexp.MustCompile("^- detail contains: `(.*)`$")
)

// parseVectors reads every vector and public key of the page on its own,
// without the generator: what a device maker would copy.
func parseVectors(t *testing.T, doc string) ([]docVector, map[string][]byte) {
	t.Helper()
	var out []docVector
	keys := map[string][]byte{}
	var cur *docVector
	lines := strings.Split(doc, "\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if m := headRE.FindStringSubmatch(l); m != nil {
			out = append(out, docVector{name: m[1]})
			cur = &out[len(out)-1]
			continue
		}
		fence, isFence := strings.CutPrefix(l, "```")
		if isFence && (fence == "hex" || strings.HasPrefix(fence, "pubkey ")) {
			var h strings.Builder
			for i++; i < len(lines) && lines[i] != "```"; i++ {
				h.WriteString(strings.TrimSpace(lines[i]))
			}
			b, err := hex.DecodeString(h.String())
			if err != nil {
				t.Fatalf("line %d: %s block: %v", i, fence, err)
			}
			if k, ok := strings.CutPrefix(fence, "pubkey "); ok {
				keys[k] = b
			} else if cur == nil || cur.msg != nil {
				t.Fatalf("line %d: hex block outside a vector", i)
			} else {
				cur.msg = b
			}
			continue
		}
		if cur == nil {
			continue
		}
		if m := keyRE.FindStringSubmatch(l); m != nil {
			cur.key = m[1]
		} else if m := verdictRE.FindStringSubmatch(l); m != nil {
			cur.verdict = m[1]
		} else if m := detailRE.FindStringSubmatch(l); m != nil {
			cur.detail = m[1]
		}
	}
	return out, keys
}

// TestProtocolDocVerdicts parses the hex blocks of docs/protocol.md and runs
// each through the reference pipeline (testvectors.Check: envelope, decode,
// identity, schema, time), asserting the verdict the page states.
func TestProtocolDocVerdicts(t *testing.T) {
	vs, keys := parseVectors(t, readDoc(t, "docs/protocol.md"))
	if len(vs) != len(docVectors) {
		t.Fatalf("parsed %d vectors from docs/protocol.md, want %d", len(vs), len(docVectors))
	}
	p, _ := testvectors.PublicKey(testvectors.P256).(*ecdsa.PublicKey).Bytes()
	if !bytes.Equal(keys[testvectors.P256], p) {
		t.Error("the page's P-256 public key is not the test key")
	}
	if !bytes.Equal(keys[testvectors.Ed25519], testvectors.PublicKey(testvectors.Ed25519).(ed25519.PublicKey)) {
		t.Error("the page's Ed25519 public key is not the test key")
	}
	seen := map[verdict.Verdict]bool{}
	for _, v := range vs {
		t.Run(v.name, func(t *testing.T) {
			if v.msg == nil || v.key == "" || v.verdict == "" {
				t.Fatalf("incomplete vector: %+v", v)
			}
			want := verdict.Verdict(v.verdict)
			if !want.Valid() {
				t.Fatalf("verdict %q is not a verdict", v.verdict)
			}
			err := testvectors.Check(testvectors.Case{Name: v.name, Key: v.key, Msg: v.msg})
			if got := verdict.Of(err); got != want {
				t.Fatalf("verdict %q (%v), page says %q", got, err, want)
			}
			if v.detail != "" && !strings.Contains(err.Error(), v.detail) {
				t.Errorf("error %q lacks the stated detail %q", err, v.detail)
			}
			seen[want] = true
		})
	}
	// One vector at least for every verdict a message alone decides.
	for _, v := range []verdict.Verdict{verdict.Accepted, verdict.Malformed, verdict.BadSignature,
		verdict.IdentityMismatch, verdict.Schema, verdict.Future, verdict.Stale} {
		if !seen[v] {
			t.Errorf("docs/protocol.md has no vector with verdict %s", v)
		}
	}
}
