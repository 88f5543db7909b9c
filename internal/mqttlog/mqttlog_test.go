package mqttlog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// mochi's log lines never carry packets: neither a PUBLISH's payload
// (patient data) nor a CONNECT's password (an app's token).
func TestHandlerStripsPackets(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(Handler{Handler: slog.NewTextHandler(&buf, nil), Drop: []string{"publish packet error"}})
	connect := packets.Packet{Connect: packets.ConnectParams{Password: []byte("SECRET-TOKEN")}}
	log.With("component", "mochi").Warn("error processing packet", "client", "d1", "pk", connect)
	log.WithGroup("g").Debug("failed publishing packet", "packet", packets.Packet{Payload: []byte("SECRET-VITALS")})
	log.Error("publish packet error", "packet", packets.Packet{Payload: []byte("SECRET-VITALS")})
	out := buf.String()
	if strings.Contains(out, "SECRET") || strings.Contains(out, "publish packet error") ||
		!strings.Contains(out, "client=d1") || !strings.Contains(out, "component=mochi") {
		t.Fatalf("log output: %s", out)
	}
}
