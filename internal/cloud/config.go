package cloud

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/vitalgate/vitalgate/internal/fhirexport"
	"github.com/vitalgate/vitalgate/internal/oidc"
	"github.com/vitalgate/vitalgate/internal/pki"
	"github.com/vitalgate/vitalgate/internal/webview"
)

// Config is the cloud broker's configuration: the YAML file of `broker
// --config`, overridden by flags. Start from [Default] and check with
// [Config.Validate].
type Config struct {
	// PKI is the PKI directory (docs/design.md#the-pki-directory; broker.crt, broker.key,
	// gateway-ca.crt, app-token.pub are read from it).
	PKI string `yaml:"pki"`
	// Listen is the gateways' listener: MQTT over mutual TLS, client
	// certificates from gateway-ca.crt only. The default port, 8893, leaves
	// 8883 to a gateway's device listener on the same host.
	Listen string `yaml:"listen"`
	// Apps is the apps' MQTT over TLS listener (JWT password). Empty: off.
	Apps string `yaml:"apps"`
	// WS is the apps' MQTT over WebSocket+TLS listener. Empty: off.
	WS string `yaml:"ws"`
	// Data is the directory of the persistent store (sessions, in-flight
	// QoS 1 messages, retained messages). Empty: nothing survives a restart.
	Data string `yaml:"data"`
	// HTTP serves /metrics, /healthz and /readyz. Empty: off.
	HTTP string `yaml:"http"`
	// Updates serves the update repository Repo over HTTPS to gateways
	// (mutual TLS, gateway-ca.crt, like Listen). Empty: off.
	Updates string `yaml:"updates"`
	// Repo is the update repository directory (metadata/, targets/) that
	// `certs update-init` and `certs firmware` write.
	Repo string `yaml:"repo"`

	// MaxPacket is the largest MQTT packet accepted, in bytes (above the
	// 64 KiB payload limit plus headers).
	MaxPacket int `yaml:"max_packet"`
	// MaxInflight bounds the QoS 1 messages held per session, including the
	// queue of a disconnected persistent session.
	MaxInflight int `yaml:"max_inflight"`
	// MaxWritesPending bounds the packets queued for writing per connection.
	MaxWritesPending int `yaml:"max_writes_pending"`
	// MaxClients bounds the connected clients.
	MaxClients int `yaml:"max_clients"`
	// SessionExpiry is how long a disconnected persistent session (and its
	// queue) is kept.
	SessionExpiry time.Duration `yaml:"session_expiry"`
	// MessageExpiry, when > 0, drops queued and retained messages older than
	// this. 0 keeps them (bounded by MaxInflight and SessionExpiry); note that
	// mochi applies it to retained messages too, so a gateway's retained
	// `online` status would vanish after it.
	MessageExpiry time.Duration `yaml:"message_expiry"`
	// SyncWrites fsyncs every store write. Off, writes survive a process
	// crash but not a power loss.
	SyncWrites bool `yaml:"sync_writes"`
	// ConnectTimeout is the time a new connection has to finish its TLS
	// handshake and send CONNECT.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// AppWriteTimeout bounds the time a write to an app may make no
	// progress: an app that stops reading for this long is disconnected (its
	// persistent session keeps up to MaxInflight messages), so a slow
	// consumer never holds up the gateways or other apps.
	AppWriteTimeout time.Duration `yaml:"app_write_timeout"`
	// LogLevel is the `broker` command's log level: debug, info, warn or
	// error. (The gateway's embedded broker logs through the gateway.)
	LogLevel string `yaml:"log_level"`
	// OIDC is an outside OpenID Connect provider whose tokens apps may
	// present besides those of app-token.key (off without an issuer).
	OIDC oidc.Config `yaml:"oidc"`
	// FHIR is the broker's FHIR exporter (docs/clinicians.md#fhir): off
	// unless enabled.
	FHIR fhirexport.Config `yaml:"fhir"`

	// Web serves the clinician web view over HTTPS (internal/webview); it
	// needs WS, which the page connects to. Empty: off.
	Web string `yaml:"web"`
	// WebAlerts are the web view's clinical alert thresholds by measurement
	// (webview.Alerts); measurements not named keep their defaults.
	WebAlerts webview.Alerts `yaml:"web_alerts"`
}

// Default returns a configuration that runs on a laptop: loopback listeners
// on the documented ports (docs/operations.md#broker) and state under ./broker-data.
func Default() Config {
	return Config{
		PKI:              "pki",
		Listen:           "127.0.0.1:8893",
		Apps:             "127.0.0.1:8884",
		WS:               "127.0.0.1:8885",
		Data:             "broker-data",
		HTTP:             "127.0.0.1:8886",
		MaxPacket:        160 << 10, // a cloud message carries the record twice (rec and sig)
		MaxInflight:      1024,
		MaxWritesPending: 1024,
		MaxClients:       20000,
		SessionExpiry:    7 * 24 * time.Hour,
		ConnectTimeout:   10 * time.Second,
		AppWriteTimeout:  30 * time.Second,
		LogLevel:         "info",
		FHIR:             fhirexport.Default(),
	}
}

// Validate reports every problem of c at once, each naming its field.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.PKI == "" {
		bad("pki", "required")
	}
	addrs := map[string]string{}
	checkAddr := func(field, v string, required bool) {
		if v == "" {
			if required {
				bad(field, "required")
			}
			return
		}
		_, port, err := net.SplitHostPort(v)
		if err != nil {
			bad(field, "%q is not host:port", v)
			return
		}
		if port != "0" {
			if other, dup := addrs[v]; dup {
				bad(field, "%q is also %s", v, other)
			}
			addrs[v] = field
		}
	}
	if c.LogLevel != "" {
		if err := new(slog.Level).UnmarshalText([]byte(c.LogLevel)); err != nil {
			bad("log_level", "%q: want debug, info, warn or error", c.LogLevel)
		}
	}
	checkAddr("listen", c.Listen, true)
	checkAddr("apps", c.Apps, false)
	checkAddr("ws", c.WS, false)
	checkAddr("http", c.HTTP, false)
	checkAddr("updates", c.Updates, false)
	checkAddr("web", c.Web, false)
	if c.Web != "" && c.WS == "" {
		bad("web", "needs ws (the web view's page connects to it)")
	}
	if err := c.WebAlerts.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Updates != "" && c.Repo == "" {
		bad("repo", "required with updates")
	}
	if c.MaxPacket < 4<<10 || c.MaxPacket > 16<<20 {
		bad("max_packet", "%d outside 4096..16777216", c.MaxPacket)
	}
	if c.MaxInflight < 1 || c.MaxInflight > 65535 {
		bad("max_inflight", "%d outside 1..65535", c.MaxInflight)
	}
	if c.MaxWritesPending < 1 || c.MaxWritesPending > 1<<20 {
		bad("max_writes_pending", "%d outside 1..1048576", c.MaxWritesPending)
	}
	if c.MaxClients < 1 {
		bad("max_clients", "%d must be positive", c.MaxClients)
	}
	if c.SessionExpiry < time.Second || c.SessionExpiry > 365*24*time.Hour {
		bad("session_expiry", "%s outside 1s..8760h", c.SessionExpiry)
	}
	if c.MessageExpiry < 0 {
		bad("message_expiry", "%s is negative", c.MessageExpiry)
	}
	if c.ConnectTimeout < 100*time.Millisecond || c.ConnectTimeout > 5*time.Minute {
		bad("connect_timeout", "%s outside 100ms..5m", c.ConnectTimeout)
	}
	if c.AppWriteTimeout < 100*time.Millisecond || c.AppWriteTimeout > 10*time.Minute {
		bad("app_write_timeout", "%s outside 100ms..10m", c.AppWriteTimeout)
	}
	errs = append(errs, c.OIDC.Validate()...)
	if c.OIDC.Issuer == pki.TokenIssuer {
		bad("oidc.issuer", "%q is the issuer of the tokens of app-token.key", c.OIDC.Issuer)
	}
	if err := c.FHIR.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
