// Package junit writes test results as JUnit XML, the report format CI
// systems show (Jenkins' junit step, GitLab's artifacts:reports:junit,
// GitHub test-report actions): test suites of test cases, each passed,
// failed, in error or skipped.
package junit

import (
	"encoding/xml"
	"fmt"
	"io"
	"time"
)

// Suite is one test suite.
type Suite struct {
	Name  string
	Start time.Time
	Time  time.Duration
	Cases []Case
}

// Case is one test case. At most one of Failure, Error and Skipped is set:
// its message; Text is the longer explanation.
type Case struct {
	Name, Class string
	Time        time.Duration
	Failure     string
	Error       string
	Skipped     string
	Text        string
}

type xmlSuites struct {
	XMLName  xml.Name   `xml:"testsuites"`
	Name     string     `xml:"name,attr"`
	Tests    int        `xml:"tests,attr"`
	Failures int        `xml:"failures,attr"`
	Errors   int        `xml:"errors,attr"`
	Skipped  int        `xml:"skipped,attr"`
	Time     string     `xml:"time,attr"`
	Suites   []xmlSuite `xml:"testsuite"`
}

type xmlSuite struct {
	Name      string    `xml:"name,attr"`
	Tests     int       `xml:"tests,attr"`
	Failures  int       `xml:"failures,attr"`
	Errors    int       `xml:"errors,attr"`
	Skipped   int       `xml:"skipped,attr"`
	Time      string    `xml:"time,attr"`
	Timestamp string    `xml:"timestamp,attr"`
	Cases     []xmlCase `xml:"testcase"`
}

type xmlCase struct {
	Name      string      `xml:"name,attr"`
	ClassName string      `xml:"classname,attr"`
	Time      string      `xml:"time,attr"`
	Failure   *xmlProblem `xml:"failure,omitempty"`
	Error     *xmlProblem `xml:"error,omitempty"`
	Skipped   *xmlProblem `xml:"skipped,omitempty"`
}

type xmlProblem struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr,omitempty"`
	Text    string `xml:",chardata"`
}

func secs(d time.Duration) string { return fmt.Sprintf("%.3f", max(d, 0).Seconds()) }

func problem(msg, typ, text string) *xmlProblem {
	if msg == "" {
		return nil
	}
	return &xmlProblem{Message: msg, Type: typ, Text: text}
}

// Write writes the suites as one JUnit XML document named name.
func Write(w io.Writer, name string, suites ...Suite) error {
	doc := xmlSuites{Name: name}
	var total time.Duration
	for _, s := range suites {
		xs := xmlSuite{Name: s.Name, Time: secs(s.Time), Timestamp: s.Start.UTC().Format("2006-01-02T15:04:05")}
		for _, c := range s.Cases {
			xc := xmlCase{Name: c.Name, ClassName: c.Class, Time: secs(c.Time),
				Failure: problem(c.Failure, "failure", c.Text), Error: problem(c.Error, "error", c.Text),
				Skipped: problem(c.Skipped, "", c.Text)}
			switch {
			case xc.Failure != nil:
				xs.Failures++
			case xc.Error != nil:
				xs.Errors++
			case xc.Skipped != nil:
				xs.Skipped++
			}
			xs.Cases = append(xs.Cases, xc)
		}
		xs.Tests = len(xs.Cases)
		doc.Tests, doc.Failures, doc.Errors, doc.Skipped = doc.Tests+xs.Tests, doc.Failures+xs.Failures, doc.Errors+xs.Errors, doc.Skipped+xs.Skipped
		total += s.Time
		doc.Suites = append(doc.Suites, xs)
	}
	doc.Time = secs(total)
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}
