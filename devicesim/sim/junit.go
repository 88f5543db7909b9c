package sim

import (
	"io"

	"github.com/vitalgate/vitalgate/internal/junit"
)

// WriteJUnit writes the result as JUnit XML: one test suite for the
// scenario, one test case per expectation (or per phase without any), named
// "{phase}: {expectation}". runErr, when not nil, is the error that stopped
// the run: it becomes an error case.
func (r *Result) WriteJUnit(w io.Writer, runErr error) error {
	s := junit.Suite{Name: r.Scenario, Start: r.Start, Time: r.End.Sub(r.Start)}
	for _, p := range r.Phases {
		class, d := r.Scenario+"."+p.Name, p.End.Sub(p.Start)
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
	if runErr != nil {
		s.Cases = append(s.Cases, junit.Case{Name: "run", Class: r.Scenario, Error: runErr.Error(), Text: runErr.Error()})
	}
	return junit.Write(w, "devicesim", s)
}
