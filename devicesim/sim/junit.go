package sim

import (
	"encoding/xml"
	"fmt"
	"io"
	"time"
)

// JUnit XML as CI systems read it (the schema of Ant's JUnit report, which
// Jenkins, GitLab and GitHub actions show).
type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Errors   int          `xml:"errors,attr"`
	Time     string       `xml:"time,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name      string      `xml:"name,attr"`
	Tests     int         `xml:"tests,attr"`
	Failures  int         `xml:"failures,attr"`
	Errors    int         `xml:"errors,attr"`
	Time      string      `xml:"time,attr"`
	Timestamp string      `xml:"timestamp,attr"`
	Cases     []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	ClassName string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitProblem `xml:"failure,omitempty"`
	Error     *junitProblem `xml:"error,omitempty"`
}

type junitProblem struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr"`
	Text    string `xml:",chardata"`
}

func secs(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()) }

// WriteJUnit writes the result as JUnit XML: one test suite for the
// scenario, one test case per expectation (or per phase without any), named
// "{phase}: {expectation}". runErr, when not nil, is the error that stopped
// the run: it becomes an error case of the phase it stopped.
func (r *Result) WriteJUnit(w io.Writer, runErr error) error {
	s := junitSuite{Name: r.Scenario, Time: secs(r.End.Sub(r.Start)), Timestamp: r.Start.UTC().Format("2006-01-02T15:04:05")}
	for _, p := range r.Phases {
		class := r.Scenario + "." + p.Name
		if len(p.Checks) == 0 {
			s.Cases = append(s.Cases, junitCase{Name: p.Name + ": runs", ClassName: class, Time: secs(p.End.Sub(p.Start))})
		}
		for _, c := range p.Checks {
			jc := junitCase{Name: p.Name + ": " + c.Expectation.String(), ClassName: class, Time: secs(p.End.Sub(p.Start))}
			if !c.OK {
				jc.Failure = &junitProblem{Message: "got " + fmtNum(c.Got), Type: "expectation", Text: c.Message(r.File)}
				s.Failures++
			}
			s.Cases = append(s.Cases, jc)
		}
	}
	if runErr != nil {
		s.Cases = append(s.Cases, junitCase{Name: "run", ClassName: r.Scenario,
			Error: &junitProblem{Message: runErr.Error(), Type: "error", Text: runErr.Error()}})
		s.Errors++
	}
	s.Tests = len(s.Cases)
	out := junitSuites{Name: "devicesim", Tests: s.Tests, Failures: s.Failures, Errors: s.Errors, Time: s.Time, Suites: []junitSuite{s}}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(out); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}
