// Package version says what a program is: its version, the commit it was
// built from, the Go version and the modules linked in, for `--version` and
// for the vitalgate_build_info metric. A release build sets the version
// with
//
//	-ldflags "-X github.com/vitalgate/vitalgate/internal/version.Version=v1.2.3"
//
// Without it the module's version from the build information is used
// (`(devel)` for a build from a work tree); the commit is the VCS revision
// Go records (-buildvcs), "unknown" without one.
package version

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Version is set at link time by a release build (see the package doc).
var Version string

// Module is one module linked into the program.
type Module struct {
	Path, Version string
	Replace       string // the replacement's path@version, if replaced
}

// Info is what [Get] reports.
type Info struct {
	Version   string
	Commit    string // VCS revision, "unknown" if not recorded
	Modified  bool   // the work tree had uncommitted changes
	Time      string // commit time (RFC 3339), "" if not recorded
	GoVersion string
	Modules   []Module
}

// Get reads the build information of the running program.
func Get() Info {
	i := Info{Version: Version, Commit: "unknown", GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		if i.Version == "" {
			i.Version = "unknown"
		}
		return i
	}
	if i.Version == "" {
		i.Version = bi.Main.Version
	}
	if i.Version == "" {
		i.Version = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			i.Commit = s.Value
		case "vcs.modified":
			i.Modified = s.Value == "true"
		case "vcs.time":
			i.Time = s.Value
		}
	}
	for _, d := range bi.Deps {
		m := Module{Path: d.Path, Version: d.Version}
		if d.Replace != nil {
			m.Replace = d.Replace.Path + "@" + d.Replace.Version
		}
		i.Modules = append(i.Modules, m)
	}
	return i
}

// Print writes what `program --version` shows: a first line with the
// version, commit and Go version, then the modules, one a line.
func (i Info) Print(w io.Writer, program string) {
	commit := i.Commit
	if i.Modified {
		commit += " (modified)"
	}
	fmt.Fprintf(w, "%s %s commit %s %s\n", program, i.Version, commit, i.GoVersion)
	if i.Time != "" {
		fmt.Fprintf(w, "built from the commit of %s\n", i.Time)
	}
	for _, m := range i.Modules {
		if m.Replace != "" {
			fmt.Fprintf(w, "  %s %s => %s\n", m.Path, m.Version, m.Replace)
			continue
		}
		fmt.Fprintf(w, "  %s %s\n", m.Path, m.Version)
	}
}

// Asked reports whether args (a program's arguments) ask for its version:
// a first argument --version, -version or version.
func Asked(args []string) bool {
	return len(args) > 0 && (args[0] == "--version" || args[0] == "-version" || args[0] == "version")
}

// Collector is the vitalgate_build_info gauge: always 1, its labels say
// what is running.
func Collector() prometheus.Collector {
	i := Get()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "vitalgate_build_info",
		Help:        "Always 1: the version, commit and Go version of the running program.",
		ConstLabels: prometheus.Labels{"version": i.Version, "commit": shortCommit(i), "goversion": i.GoVersion}})
	g.Set(1)
	return g
}

func shortCommit(i Info) string {
	c := i.Commit
	if i.Modified {
		c += "-modified"
	}
	return strings.TrimSpace(c)
}
