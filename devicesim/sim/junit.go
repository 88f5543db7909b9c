package sim

import (
	"io"

	"github.com/vitalgate/vitalgate/internal/junit"
)

// WriteJUnit writes the result as JUnit XML: one test suite for the
// scenario, one test case per expectation (or per phase without any), named
// "{phase}: {expectation}". runErr, when not nil, is the error that stopped
// the run: the phase it stopped (the last of r.Phases, whose expectations
// were not judged) is an error case "{phase}: runs", or, when it stopped
// before the first phase, an error case "run".
func (r *Result) WriteJUnit(w io.Writer, runErr error) error {
	s := junit.Suite{Name: r.Scenario, Start: r.Start, Time: r.End.Sub(r.Start)}
	for i, p := range r.Phases {
		class, d := r.Scenario+"."+p.Name, p.End.Sub(p.Start)
		if runErr != nil && i == len(r.Phases)-1 {
			s.Cases = append(s.Cases, junit.Case{Name: p.Name + ": runs", Class: class, Time: d,
				Error: runErr.Error(), Text: runErr.Error()})
			continue
		}
		if len(p.Checks) == 0 {
			s.Cases = append(s.Cases, junit.Case{Name: p.Name + ": runs", Class: class, Time: d})
		}
		for _, c := range p.Checks {
			jc := junit.Case{Name: p.Name + ": " + c.Expectation.String(), Class: class, Time: d}
			if !c.OK {
				jc.Failure, jc.Text = "got "+fmtNum(c.Got), c.Message(r.File)
			}
			s.Cases = append(s.Cases, jc)
		}
	}
	if runErr != nil && len(r.Phases) == 0 {
		s.Cases = append(s.Cases, junit.Case{Name: "run", Class: r.Scenario, Error: runErr.Error(), Text: runErr.Error()})
	}
	return junit.Write(w, "devicesim", s)
}
