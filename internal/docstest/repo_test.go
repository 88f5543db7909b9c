package docstest

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/verdict"
)

// walkRepo calls fn for every file under the root whose name ends in one of
// exts, with its path relative to the root; it skips .git and node_modules.
func walkRepo(t *testing.T, exts []string, fn func(rel string, src []byte)) {
	t.Helper()
	r := root(t)
	err := filepath.WalkDir(r, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == ".git" || d.Name() == "node_modules" {
				return filepath.SkipDir
			}
			return nil
		}
		for _, e := range exts {
			if strings.HasSuffix(p, e) {
				src, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				rel, _ := filepath.Rel(r, p)
				fn(filepath.ToSlash(rel), src)
				return nil
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// outsideRef matches a reference to a design file or a directory that is not
// part of the repository. (Spelled so that this file does not match it.)
var outsideRef = regexp.MustCompile(`DESIGN(\.md\b| sections? [0-9])|\.\./shared\b|/work/share[d]\b`)

// TestNoOutsideReferences checks that no document, no Go file (tests
// included, and with them every help text) and no data file sends its reader
// to a file outside the repository: the repository carries its own design in
// docs/design.md.
func TestNoOutsideReferences(t *testing.T) {
	n := 0
	walkRepo(t, []string{".go", ".md", ".yaml", ".yml", "/run"}, func(rel string, src []byte) {
		n++
		for i, line := range strings.Split(string(src), "\n") {
			if m := outsideRef.FindString(line); m != "" {
				t.Errorf("%s:%d names %q, which is not in the repository; point at docs/design.md or another document of the repository", rel, i+1, m)
			}
		}
	})
	if n < 50 {
		t.Fatalf("checked only %d files", n)
	}
}

// slug is the anchor GitHub gives a heading: lower case, punctuation other
// than '-' and '_' dropped, spaces made '-'.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsNumber(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// anchors returns the heading anchors of a Markdown document, outside code
// blocks, with GitHub's -1, -2 suffixes for repeated headings.
func anchors(doc string) map[string]bool {
	out := map[string]bool{}
	count := map[string]int{}
	fence := false
	for _, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(line, "```") {
			fence = !fence
			continue
		}
		if fence || !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.TrimLeft(line, "#")
		if !strings.HasPrefix(h, " ") {
			continue
		}
		s := slug(strings.ReplaceAll(h, "`", ""))
		if c := count[s]; c > 0 {
			out[s+"-"+strconv.Itoa(c)] = true
		} else {
			out[s] = true
		}
		count[s]++
	}
	return out
}

var (
	mdLink  = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	docsRef = regexp.MustCompile(`\bdocs/[a-z]+\.md(#[a-z0-9_-]+)?`)
)

// checkTarget reports whether target (a path relative to the root, with an
// optional #anchor) names an existing file and, for a Markdown file, one of
// its headings.
func checkTarget(t *testing.T, target string) string {
	t.Helper()
	file, anchor, _ := strings.Cut(target, "#")
	b, err := os.ReadFile(filepath.Join(root(t), filepath.FromSlash(file)))
	if err != nil {
		return "no such file"
	}
	if anchor != "" && strings.HasSuffix(file, ".md") && !anchors(string(b))[anchor] {
		return "no heading with anchor #" + anchor
	}
	return ""
}

// TestDocLinks checks every relative link of README.md and docs/*.md, and
// every docs/NAME.md#anchor that a Go comment or help text cites: the file
// exists and, for an anchor, has that heading.
func TestDocLinks(t *testing.T) {
	docs, err := filepath.Glob(filepath.Join(root(t), "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"README.md"}
	for _, d := range docs {
		names = append(names, "docs/"+filepath.Base(d))
	}
	links := 0
	for _, name := range names {
		for _, m := range mdLink.FindAllStringSubmatch(readDoc(t, name), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			if strings.HasPrefix(target, "#") {
				target = name + target
			} else {
				target = filepath.ToSlash(filepath.Join(filepath.Dir(name), target))
			}
			links++
			if problem := checkTarget(t, target); problem != "" {
				t.Errorf("%s links %s: %s", name, m[1], problem)
			}
		}
	}
	if links < 20 {
		t.Errorf("found only %d links in the docs", links)
	}
	cited := 0
	walkRepo(t, []string{".go", ".yaml"}, func(rel string, src []byte) {
		for _, ref := range docsRef.FindAllString(string(src), -1) {
			cited++
			if problem := checkTarget(t, ref); problem != "" {
				t.Errorf("%s cites %s: %s", rel, ref, problem)
			}
		}
	})
	if cited < 20 {
		t.Errorf("found only %d citations of docs/*.md in the code", cited)
	}
}

// docSection returns the lines of doc from the heading title to the next
// heading of the same or a higher level.
func docSection(t *testing.T, doc, title string) string {
	t.Helper()
	lines := strings.Split(doc, "\n")
	for i, l := range lines {
		level := len(l) - len(strings.TrimLeft(l, "#"))
		if level == 0 || strings.TrimSpace(l[level:]) != title {
			continue
		}
		var b strings.Builder
		for _, m := range lines[i+1:] {
			if lv := len(m) - len(strings.TrimLeft(m, "#")); lv > 0 && lv <= level && strings.HasPrefix(m[lv:], " ") {
				break
			}
			b.WriteString(m + "\n")
		}
		return b.String()
	}
	t.Fatalf("no section %q", title)
	return ""
}

// TestDesignPKIFiles checks that the PKI directory table of docs/design.md
// names exactly the files and directories of package pki.
func TestDesignPKIFiles(t *testing.T) {
	table := docSection(t, readDoc(t, "docs/design.md"), "The PKI directory")
	var doc []string
	for _, line := range strings.Split(table, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cell := strings.Split(line, "|")[1]
		for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(cell, -1) {
			doc = append(doc, strings.TrimSuffix(m[1], "/"))
		}
	}
	code := []string{pki.FileCA, pki.FileDeviceCA, pki.FileDeviceCAKey, pki.FileGatewayCA, pki.FileGatewayCAKey,
		pki.FileCRL, pki.FileGateway, pki.FileGatewayKey, pki.FileGatewayClient, pki.FileGatewayClientKey,
		pki.FileBroker, pki.FileBrokerKey, pki.FileAppTokenKey, pki.FileAppTokenPub, pki.DevicesDir,
		pki.FileIssuingCA, pki.FileIssuingCAKey, pki.FileIssuingCRL, pki.ManufacturersDir, pki.FileEnroll,
		pki.FileGatewayCRL, pki.FileRevokedTokens, pki.IssuedDir, pki.FactoryDir, pki.GatewaysDir,
		pki.FileUpdateSigningKey, pki.FileUpdateSigningPub, pki.TUFKeysDir, pki.FileTUFRoot}
	sort.Strings(doc)
	sort.Strings(code)
	if strings.Join(doc, " ") != strings.Join(code, " ") {
		t.Errorf("docs/design.md PKI directory lists\n  %v\npackage pki has\n  %v", doc, code)
	}
}

// TestDesignPaths checks that every repository path docs/design.md names in
// backticks exists.
func TestDesignPaths(t *testing.T) {
	n := 0
	for _, m := range regexp.MustCompile("`((?:gateway|internal|broker|certs|devicesim)/[a-z/._]+)`").FindAllStringSubmatch(readDoc(t, "docs/design.md"), -1) {
		n++
		if _, err := os.Stat(filepath.Join(root(t), filepath.FromSlash(m[1]))); err != nil {
			t.Errorf("docs/design.md names %s: %v", m[1], err)
		}
	}
	if n < 10 {
		t.Errorf("found only %d paths in docs/design.md", n)
	}
}

// TestAppsGuide checks what docs/apps.md states about access against the
// cloud broker: the topic prefixes each role may read, and the token's iss
// and aud.
func TestAppsGuide(t *testing.T) {
	doc := readDoc(t, "docs/apps.md")
	src, err := os.ReadFile(filepath.Join(root(t), "internal", "cloud", "acl.go"))
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string][]string{}
	for _, p := range regexp.MustCompile("(?m)^\\| `([a-z]+)/\\{site\\}/#` \\|.*\\| (yes|no) \\| (yes|no) \\|$").FindAllStringSubmatch(doc, -1) {
		if p[2] == "yes" {
			documented["clinicianReads"] = append(documented["clinicianReads"], p[1])
		}
		if p[3] == "yes" {
			documented["operatorReads"] = append(documented["operatorReads"], p[1])
		}
	}
	for _, role := range []string{"clinicianReads", "operatorReads"} {
		m := regexp.MustCompile(role + `\s*= map\[string\]bool\{([^}]*)\}`).FindSubmatch(src)
		if m == nil {
			t.Fatalf("internal/cloud/acl.go: no %s map", role)
		}
		var code []string
		for _, p := range regexp.MustCompile(`"([a-z]+)": true`).FindAllSubmatch(m[1], -1) {
			code = append(code, string(p[1]))
		}
		sort.Strings(code)
		sort.Strings(documented[role])
		if len(code) == 0 || strings.Join(code, " ") != strings.Join(documented[role], " ") {
			t.Errorf("docs/apps.md: %s read %v; internal/cloud/acl.go %s allows %v", role, documented[role], role, code)
		}
	}
	for _, claim := range []string{"| `iss` | `" + pki.TokenIssuer + "` |", "| `aud` | `" + pki.TokenAudience + "` |"} {
		if !strings.Contains(doc, claim) {
			t.Errorf("docs/apps.md lacks the token claim row %q", claim)
		}
	}
}

// eventLiteral matches where the code names a security event: an
// audit.Event's Verdict field, or a constant Event... = "name" or
// Verdict... = "name".
var eventLiteral = regexp.MustCompile(`(?:\bVerdict:\s*|\b(?:Event|Verdict)\w*\s*=\s*)"([a-z_]+)"`)

// TestEventNamesListed: every security event name in the programs' code
// (tests aside) is a verdict or listed in verdict.Events, which a
// scenario's events.{name} is checked against; and every listed event is
// documented.
func TestEventNamesListed(t *testing.T) {
	seen := map[string]bool{}
	walkRepo(t, []string{".go"}, func(rel string, src []byte) {
		if strings.HasSuffix(rel, "_test.go") || strings.HasPrefix(rel, "internal/docstest/") {
			return
		}
		for _, m := range eventLiteral.FindAllSubmatch(src, -1) {
			name := string(m[1])
			seen[name] = true
			if name != string(verdict.Accepted) && !verdict.IsEventName(name) {
				t.Errorf("%s: event %q is not in verdict.Events", rel, name)
			}
		}
	})
	if len(seen) < 15 {
		t.Fatalf("found only %d event names in the code: %v", len(seen), seen)
	}
	var docs strings.Builder
	walkRepo(t, []string{".md"}, func(rel string, src []byte) {
		if strings.HasPrefix(rel, "docs/") {
			docs.Write(src)
		}
	})
	for _, e := range verdict.Events() {
		if !seen[e] {
			t.Errorf("verdict.Events lists %q, which no code sends", e)
		}
		if !strings.Contains(docs.String(), "`"+e+"`") {
			t.Errorf("event %q is not documented under docs/", e)
		}
	}
}
