package testvectors

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/vitalgate/vitalgate/internal/verdict"
)

var update = flag.Bool("update", false, "rewrite vectors.json from Generate")

// TestVectorsGolden keeps vectors.json (the ECDSA messages) in step with
// Generate; with -update it rewrites the file.
func TestVectorsGolden(t *testing.T) {
	fresh, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	var random []Case
	for _, c := range fresh {
		if c.Randomized {
			random = append(random, c)
		}
	}
	if *update {
		b, err := Marshal(random)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile("vectors.json", b, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %d cases to vectors.json", len(random))
		return
	}
	stable := Cases() // fails when vectors.json lacks a case or its payload changed
	if len(stable) != len(fresh) {
		t.Fatalf("Cases has %d cases, Generate %d", len(stable), len(fresh))
	}
	again, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range fresh {
		if !c.Randomized && !bytes.Equal(c.Msg, again[i].Msg) {
			t.Errorf("%s: not deterministic", c.Name)
		}
		if !bytes.Equal(c.Payload, again[i].Payload) {
			t.Errorf("%s: payload not deterministic", c.Name)
		}
	}
	var gold []Case
	if err := json.Unmarshal(golden, &gold); err != nil {
		t.Fatal(err)
	}
	if len(gold) != len(random) {
		t.Errorf("vectors.json has %d cases, Generate %d randomized: run with -update", len(gold), len(random))
	}
}

// TestCases checks every vector, golden and fresh, gets its verdict.
func TestCases(t *testing.T) {
	fresh, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[verdict.Verdict]bool{}
	for _, set := range [][]Case{Cases(), fresh} {
		for _, c := range set {
			err := Check(c)
			seen[c.Verdict] = true
			if got := verdict.Of(err); got != c.Verdict {
				t.Errorf("%s: verdict %q (%v), want %q", c.Name, got, err, c.Verdict)
				continue
			}
			if c.Detail != "" && !strings.Contains(err.Error(), c.Detail) {
				t.Errorf("%s: error %q does not contain %q", c.Name, err, c.Detail)
			}
			if c.Payload != nil && c.Verdict != verdict.TooLarge {
				if !bytes.Contains(c.Msg, c.Payload) {
					t.Errorf("%s: payload is not inside the message", c.Name)
				}
			}
		}
	}
	for _, v := range []verdict.Verdict{verdict.Accepted, verdict.TooLarge, verdict.Malformed, verdict.BadSignature,
		verdict.IdentityMismatch, verdict.Schema, verdict.Future, verdict.Stale} {
		if !seen[v] {
			t.Errorf("no case for %s", v)
		}
	}
}
