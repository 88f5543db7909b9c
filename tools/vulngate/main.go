// Command vulngate reads govulncheck's JSON output (-format json) on stdin
// and fails (exit 1) when the code calls a vulnerable function, unless the
// finding is in the standard library and its ID is in the allow file: a
// fix that needs a newer Go than the build machines have. Each allowed
// finding is still printed, so it stays in view.
//
//	govulncheck -db file://DB -format json ./... | vulngate -allow .ci/vuln-allow
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// message is the part of govulncheck's JSON stream vulngate reads.
type message struct {
	Finding *struct {
		OSV          string `json:"osv"`
		FixedVersion string `json:"fixed_version"`
		Trace        []struct {
			Module   string `json:"module"`
			Version  string `json:"version"`
			Package  string `json:"package"`
			Function string `json:"function"`
			Receiver string `json:"receiver"`
		} `json:"trace"`
	} `json:"finding"`
}

func main() {
	allowFile := flag.String("allow", "", "file of allowed standard-library vulnerability IDs, one a line (# comments)")
	flag.Parse()
	allow, err := readAllow(*allowFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vulngate:", err)
		os.Exit(2)
	}
	failed, err := judge(os.Stdin, allow, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vulngate:", err)
		os.Exit(2)
	}
	if failed {
		os.Exit(1)
	}
}

// judge reads the stream and reports whether a called vulnerability is not
// allowed.
func judge(r io.Reader, allow map[string]string, out io.Writer) (bool, error) {
	called := map[string]string{} // ID -> "module@version (fixed in ...): package.function"
	stdlib := map[string]bool{}
	dec := json.NewDecoder(r)
	for {
		var m message
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			return false, fmt.Errorf("govulncheck output: %w", err)
		}
		f := m.Finding
		if f == nil || len(f.Trace) == 0 || f.Trace[0].Function == "" {
			continue // imported or required, not called
		}
		t := f.Trace[0]
		where := fmt.Sprintf("%s@%s (fixed in %s): %s.%s", t.Module, t.Version, f.FixedVersion, t.Package, t.Function)
		if t.Module == "stdlib" {
			stdlib[f.OSV] = true
		} else {
			stdlib[f.OSV+" "+t.Module] = false
		}
		if _, seen := called[f.OSV]; !seen || t.Module != "stdlib" {
			called[f.OSV] = where
		}
	}
	ids := make([]string, 0, len(called))
	for id := range called {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	failed := false
	for _, id := range ids {
		moduleToo := false
		for k, v := range stdlib {
			if !v && strings.HasPrefix(k, id+" ") {
				moduleToo = true
			}
		}
		why, ok := allow[id]
		switch {
		case ok && stdlib[id] && !moduleToo:
			fmt.Fprintf(out, "allowed   %s %s\n          %s\n", id, called[id], why)
		default:
			failed = true
			fmt.Fprintf(out, "CALLED    %s %s\n", id, called[id])
		}
	}
	if !failed {
		fmt.Fprintf(out, "vulngate: no vulnerable function called outside the allow list (%d allowed)\n", len(ids))
	}
	return failed, nil
}

// readAllow reads "ID reason..." lines.
func readAllow(path string) (map[string]string, error) {
	allow := map[string]string{}
	if path == "" {
		return allow, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		id, why, _ := strings.Cut(line, " ")
		allow[id] = strings.TrimSpace(why)
	}
	return allow, sc.Err()
}
