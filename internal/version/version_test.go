package version

import (
	"bytes"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestGetAndPrint(t *testing.T) {
	old := Version
	Version = "v9.8.7"
	defer func() { Version = old }()
	i := Get()
	if i.Version != "v9.8.7" || !strings.HasPrefix(i.GoVersion, "go") || i.Commit == "" {
		t.Fatalf("Get: %+v", i)
	}
	var b bytes.Buffer
	i.Modules = append(i.Modules, Module{Path: "example.com/m", Version: "v1.0.0"}, Module{Path: "example.com/r", Version: "v1.0.0", Replace: "../r@"})
	i.Print(&b, "gateway")
	out := b.String()
	for _, want := range []string{"gateway v9.8.7 commit " + i.Commit, i.GoVersion, "  example.com/m v1.0.0\n", "  example.com/r v1.0.0 => ../r@\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("--version output lacks %q:\n%s", want, out)
		}
	}
}

func TestAsked(t *testing.T) {
	for args, want := range map[string]bool{"--version": true, "-version": true, "version": true, "--pki x": false, "": false, "run --version": false} {
		if got := Asked(strings.Fields(args)); got != want {
			t.Errorf("Asked(%q) = %v", args, got)
		}
	}
}

func TestCollector(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(Collector())
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || mfs[0].GetName() != "vitalgate_build_info" {
		t.Fatalf("gather: %v %v", mfs, err)
	}
	m := mfs[0].GetMetric()[0]
	labels := map[string]string{}
	for _, l := range m.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	i := Get()
	if m.GetGauge().GetValue() != 1 || labels["version"] != i.Version || labels["goversion"] != i.GoVersion || labels["commit"] == "" {
		t.Fatalf("vitalgate_build_info %v = %v", labels, m.GetGauge().GetValue())
	}
}
