package packaging

import (
	"os"
	"strings"
	"testing"
)

// TestDockerfile: the image's promises, read from the Dockerfile: a build
// stage and a scratch final stage, a static binary, a non-root user, the
// data on a volume, a healthcheck with the gateway's own subcommand (no
// curl in the image).
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{
		" AS build\n", "\nFROM scratch\n", "CGO_ENABLED=0 go build -trimpath", "-o /out/usr/local/bin/gateway ./gateway",
		"\nUSER 65532:65532\n", "\nVOLUME [\"/var/lib/vitalgate\"]\n",
		`CMD ["/usr/local/bin/gateway", "healthcheck", "--config", "/etc/vitalgate/gateway.yaml"]`,
		`ENTRYPOINT ["/usr/local/bin/gateway"]`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if strings.Count(s, "\nFROM ") != 2 {
		t.Errorf("Dockerfile: want two stages (build, scratch)")
	}
}
