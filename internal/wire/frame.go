package wire

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// maxTopic is the longest topic name MQTT can carry (a two-byte length prefix).
const maxTopic = 65535

// errFrame is the cause of every [Unframe] failure.
var errFrame = errors.New("bad queue frame")

// Frame builds the Data of a queue entry: the MQTT topic, one NUL byte, then the
// payload that is published unchanged. MQTT forbids U+0000 in topic names, so the
// first NUL always ends the topic; a topic holding one is refused later by [Unframe].
func Frame(topic string, payload []byte) []byte {
	b := make([]byte, 0, len(topic)+1+len(payload))
	b = append(b, topic...)
	b = append(b, 0)
	return append(b, payload...)
}

// Unframe splits the Data of a queue entry built by [Frame] into its topic and
// payload. The payload aliases data. It refuses data without a NUL byte and topics
// that cannot be published (empty, too long, not UTF-8, or holding a wildcard).
func Unframe(data []byte) (topic string, payload []byte, err error) {
	i := bytes.IndexByte(data, 0)
	if i < 0 {
		return "", nil, fmt.Errorf("%w: no topic separator", errFrame)
	}
	topic = string(data[:i])
	switch {
	case topic == "":
		return "", nil, fmt.Errorf("%w: empty topic", errFrame)
	case len(topic) > maxTopic:
		return "", nil, fmt.Errorf("%w: topic longer than %d bytes", errFrame, maxTopic)
	case !utf8.ValidString(topic):
		return "", nil, fmt.Errorf("%w: topic is not UTF-8", errFrame)
	case strings.ContainsAny(topic, "+#"):
		return "", nil, fmt.Errorf("%w: wildcard in topic", errFrame)
	}
	return topic, data[i+1:], nil
}
