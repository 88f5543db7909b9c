package certpub

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"

	"github.com/vitalgate/vitalgate/internal/atomicfile"
	"github.com/vitalgate/vitalgate/internal/fileerr"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// header is the first line of [File].
const header = "# device certificate chains the cloud acknowledged: device ID, SHA-256 of the published chain\n"

// maxLine bounds a line of [File]: an ID of 64 bytes, a space, 64 hex digits.
const maxLine = 256

// load reads the fingerprints of path (none when path is "" or missing),
// at most max of them. A line that does not parse is dropped with a
// warning: that device's chain is published again.
func load(path string, max int, log *slog.Logger) (map[string][32]byte, error) {
	out := map[string][32]byte{}
	if path == "" {
		return out, nil
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fileerr.Wrap("open published certificates", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, maxLine), maxLine)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		dev, fp, ok := parseLine(line)
		if !ok {
			log.Warn("published certificates: line ignored, that device's chain is published again", "file", path, "line", n)
			continue
		}
		if len(out) < max {
			out[dev] = fp
		}
	}
	if err := sc.Err(); err != nil {
		log.Warn("published certificates: rest of the file ignored, those chains are published again", "file", path, "error", err)
	}
	return out, nil
}

// parseLine parses "ID HEX".
func parseLine(line string) (string, [32]byte, bool) {
	var fp [32]byte
	dev, h, ok := strings.Cut(line, " ")
	if !ok || !pki.ValidDeviceID(dev) || len(h) != 64 {
		return "", fp, false
	}
	if _, err := hex.Decode(fp[:], []byte(h)); err != nil {
		return "", fp, false
	}
	return dev, fp, true
}

// Save writes the fingerprints to the file, through a temporary file and a
// rename, when they changed. [Publisher.Run] saves every second and when it
// returns; the gateway saves once more after the relay stopped, for the
// acknowledgements of its last moments.
func (p *Publisher) Save() {
	p.saveMu.Lock()
	defer p.saveMu.Unlock()
	p.mu.Lock()
	if !p.dirty || p.o.File == "" {
		p.mu.Unlock()
		return
	}
	p.dirty = false
	var b bytes.Buffer
	b.WriteString(header)
	devs := make([]string, 0, len(p.published))
	for dev := range p.published {
		devs = append(devs, dev)
	}
	slices.Sort(devs)
	for _, dev := range devs {
		fp := p.published[dev]
		fmt.Fprintf(&b, "%s %s\n", dev, hex.EncodeToString(fp[:]))
	}
	p.mu.Unlock()
	if err := atomicfile.Write("write published certificates", p.o.File, b.Bytes(), 0o644, true); err != nil {
		p.o.Log.Warn("published certificates not saved: chains may be published again after a restart", "error", err)
		p.mu.Lock()
		p.dirty = true
		p.mu.Unlock()
	}
}
