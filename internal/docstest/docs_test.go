package docstest

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// sources returns the non-test Go files under dir (relative to the root),
// concatenated.
func sources(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(filepath.Join(root(t), dir), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(p)
		b.Write(src)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

var goRunRE = regexp.MustCompile(`go run \./([a-z]+)((?: +[a-z]+)?)((?: +[^\n]*)?)`)

// TestReadmeCommands checks every `go run ./PROGRAM ...` line of README.md:
// the program exists and defines each --flag the line uses.
func TestReadmeCommands(t *testing.T) {
	doc := readDoc(t, "README.md")
	flagRE := regexp.MustCompile(`(?:^|\s)--([a-z][a-z-]*)`)
	n := 0
	for _, m := range goRunRE.FindAllStringSubmatch(doc, -1) {
		prog, rest := m[1], m[2]+m[3]
		src := sources(t, prog)
		if src == "" {
			t.Errorf("README runs ./%s, which has no Go source", prog)
			continue
		}
		n++
		// Flags of this command only (not of a nested $(go run ...)).
		if i := strings.Index(rest, "$("); i >= 0 {
			rest = rest[:i]
		}
		for _, f := range flagRE.FindAllStringSubmatch(rest, -1) {
			if !strings.Contains(src, `"`+f[1]+`"`) {
				t.Errorf("README: go run ./%s ... --%s: no such flag in %s/", prog, f[1], prog)
			}
		}
	}
	if n < 10 {
		t.Errorf("found only %d go run commands in README.md", n)
	}
	for _, link := range regexp.MustCompile(`\]\((docs/[a-z]+\.md)`).FindAllStringSubmatch(doc, -1) {
		if link[1] == "docs/performance.md" {
			continue // written with the load harness; may land later
		}
		if _, err := os.Stat(filepath.Join(root(t), link[1])); err != nil {
			t.Errorf("README links %s: %v", link[1], err)
		}
	}
}

// TestOperationsMetrics checks that docs/operations.md lists exactly the
// Prometheus series the code registers.
func TestOperationsMetrics(t *testing.T) {
	var code []string
	seen := map[string]bool{}
	for _, dir := range []string{"gateway", "internal", "broker"} {
		for _, m := range regexp.MustCompile(`Name:\s*"(vitalgate_[a-z0-9_]+)"`).FindAllStringSubmatch(sources(t, dir), -1) {
			if !seen[m[1]] {
				seen[m[1]] = true
				code = append(code, m[1])
			}
		}
	}
	sort.Strings(code)
	if len(code) < 20 {
		t.Fatalf("found only %d metrics in the code", len(code))
	}
	doc := readDoc(t, "docs/operations.md")
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(vitalgate_[a-z0-9_]+)").FindAllStringSubmatch(doc, -1) {
		documented[m[1]] = true
	}
	for _, name := range code {
		if !documented[name] {
			t.Errorf("metric %s is not in the docs/operations.md tables", name)
		}
	}
	for name := range documented {
		if !seen[name] {
			t.Errorf("docs/operations.md lists %s, which the code does not register", name)
		}
	}
}

// TestOperationsConfigKeys checks that every YAML key of the gateway's and
// the broker's configuration appears in docs/operations.md.
func TestOperationsConfigKeys(t *testing.T) {
	doc := readDoc(t, "docs/operations.md")
	tag := regexp.MustCompile("yaml:\"([a-z_]+)\"")
	for _, file := range []string{"gateway/internal/config/config.go", "internal/cloud/config.go", "internal/oidc/oidc.go"} {
		src, err := os.ReadFile(filepath.Join(root(t), file))
		if err != nil {
			t.Fatal(err)
		}
		keys := tag.FindAllStringSubmatch(string(src), -1)
		if len(keys) < 9 {
			t.Fatalf("%s: found only %d keys", file, len(keys))
		}
		for _, k := range keys {
			if !strings.Contains(doc, "`"+k[1]+"`") && !strings.Contains(doc, "."+k[1]+"`") &&
				!strings.Contains(doc, "`"+k[1]+".") && !strings.Contains(doc, "/ `."+k[1]) {
				t.Errorf("%s key %q is not in docs/operations.md", file, k[1])
			}
		}
	}
}
