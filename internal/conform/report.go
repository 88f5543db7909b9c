package conform

import (
	"fmt"
	"io"
	"strings"

	"github.com/vitalgate/vitalgate/internal/junit"
)

// WriteText writes the report as the list a device maker attaches to a
// submission: one line per rule, PASS, FAIL or SKIP, with the evidence.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "device %s, MQTT %s, key %s, %d messages, %s to %s\n", orNone(r.Device), mqttName(r.MQTT), orNone(r.Key),
		r.Messages, r.Start.UTC().Format("2006-01-02T15:04:05Z"), r.End.UTC().Format("15:04:05Z"))
	for _, x := range r.Results {
		mark := map[string]string{Pass: "PASS", Fail: "FAIL", NotTested: "SKIP"}[x.Status]
		fmt.Fprintf(&b, "%s  %-24s %s (%d checked)", mark, x.Rule, x.Title, x.Checked)
		if x.Evidence != "" {
			fmt.Fprintf(&b, ": %s", x.Evidence)
		}
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJUnit writes the report as JUnit XML: one test case per rule,
// skipped when not tested.
func (r *Report) WriteJUnit(w io.Writer) error {
	s := junit.Suite{Name: "conformance " + orNone(r.Device), Start: r.Start, Time: r.End.Sub(r.Start)}
	for _, x := range r.Results {
		c := junit.Case{Name: x.Rule + ": " + x.Title, Class: "conformance"}
		switch x.Status {
		case Fail:
			c.Failure, c.Text = x.Evidence, x.Evidence
		case NotTested:
			c.Skipped = x.Evidence
		}
		s.Cases = append(s.Cases, c)
	}
	return junit.Write(w, "devicesim conform", s)
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func mqttName(v byte) string {
	switch v {
	case 4:
		return "3.1.1"
	case 5:
		return "5"
	}
	return "(none)"
}
