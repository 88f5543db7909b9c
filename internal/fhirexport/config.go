package fhirexport

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/vitalgate/vitalgate/internal/fhir"
	"github.com/vitalgate/vitalgate/internal/pki"
)

// Config is the exporter's configuration: the `fhir:` key of the broker's
// YAML file and of the file of `broker fhir --config`. Start from
// [Default] and check with [Config.Validate].
type Config struct {
	// Enabled runs the exporter (in the broker; `broker fhir` always runs it).
	Enabled bool `yaml:"enabled"`
	// Sites are the sites whose telemetry is exported.
	Sites []string `yaml:"sites"`
	// Patients maps a site's devices to their patients: site -> device ID
	// -> "Patient/{id}" (or an absolute URL ending in /Patient/{id}). A
	// device missing from it is exported without a subject.
	Patients map[string]map[string]string `yaml:"patients"`
	// Publish publishes each record's Bundle on fhir/{site}/{device}
	// (QoS 1, not retained).
	Publish bool `yaml:"publish"`
	// Server is the base URL (https) of a FHIR R4 server that the
	// transaction Bundles are POSTed to. Empty: none.
	Server string `yaml:"server"`
	// ServerCA is a PEM file of the CAs that the server's certificate
	// chains to. Empty: the system's roots.
	ServerCA string `yaml:"server_ca"`
	// ServerTokenFile holds the bearer token sent to the server, read once
	// at start. Empty: no Authorization header.
	ServerTokenFile string `yaml:"server_token_file"`
	// Timeout bounds one POST to the server, and one publish.
	Timeout time.Duration `yaml:"timeout"`
	// MaxBackoff is the longest wait between two attempts after a failure
	// that may pass (5xx, 429, timeout, connection error).
	MaxBackoff time.Duration `yaml:"max_backoff"`
	// Batch is the most records one transaction Bundle POSTed to the
	// server carries.
	Batch int `yaml:"batch"`
	// Group, when set, subscribes through the shared subscription
	// $share/{group}/telemetry/{site}/#: the exporters of one group share
	// the records between them. Empty: this exporter gets every record.
	Group string `yaml:"group"`
}

// Default is the configuration before the YAML file: off, publishing on
// the fhir/ topics, 10 s timeout, backoff up to a minute, 20 records a
// Bundle.
func Default() Config {
	return Config{Publish: true, Timeout: 10 * time.Second, MaxBackoff: time.Minute, Batch: 20}
}

// Validate reports every problem of c at once, each naming its key under
// fhir. A configuration that is not enabled is checked all the same.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("fhir.%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.Enabled && len(c.Sites) == 0 {
		bad("sites", "required when enabled")
	}
	for _, s := range c.Sites {
		if !validName(s) {
			bad("sites", "%q is not a site name", s)
		}
	}
	for _, site := range sortedKeys(c.Patients) {
		if !slices.Contains(c.Sites, site) {
			bad("patients", "site %q is not in sites", site)
		}
		for _, dev := range sortedKeys(c.Patients[site]) {
			if !pki.ValidDeviceID(dev) {
				bad("patients", "%s: %q is not a device ID", site, dev)
			}
			if err := fhir.ValidPatient(c.Patients[site][dev]); err != nil {
				bad("patients", "%s: %s: %v", site, dev, err)
			}
		}
	}
	if c.Enabled && !c.Publish && c.Server == "" {
		bad("publish", "false and no server: nothing to export to")
	}
	if c.Server != "" {
		if u, err := url.Parse(c.Server); err != nil || u.Scheme != "https" || u.Host == "" {
			bad("server", "%q is not an https:// URL", c.Server)
		}
	}
	if c.Server == "" && (c.ServerCA != "" || c.ServerTokenFile != "") {
		bad("server", "required with server_ca or server_token_file")
	}
	if c.Timeout < 100*time.Millisecond || c.Timeout > 5*time.Minute {
		bad("timeout", "%s outside 100ms..5m", c.Timeout)
	}
	if c.MaxBackoff < 10*time.Millisecond || c.MaxBackoff > time.Hour {
		bad("max_backoff", "%s outside 10ms..1h", c.MaxBackoff)
	}
	if c.Batch < 1 || c.Batch > 1000 {
		bad("batch", "%d outside 1..1000", c.Batch)
	}
	if c.Group != "" && (!validName(c.Group) || strings.Contains(c.Group, ".")) {
		bad("group", "%q: letters, digits, - and _ only", c.Group)
	}
	return errors.Join(errs...)
}

// patient is the reference of a device's patient, "" when the site does
// not map it.
func (c Config) patient(site, dev string) string {
	return c.Patients[site][dev]
}

// validName: a site name of docs/design.md#trust (letters, digits, '.', '_',
// '-'; 1 to 64), which keeps MQTT wildcards and separators out of topics.
func validName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
