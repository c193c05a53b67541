// Package job records the steps of an operator's job as they run: each
// step's name, its start and end on the job's clock (virtual in a drill),
// the machine time it really took, its outcome and a detail for the
// report. The process server and the master target run their jobs' steps
// with it.
package job

import (
	"fmt"
	"strings"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/clock"
)

// Step is one step of a job. Start and End are on the job's clock; Wall is
// the machine time the step took.
type Step struct {
	Name    string        `json:"name"`
	Start   time.Time     `json:"start"`
	End     time.Time     `json:"end"`
	Outcome ferry.Outcome `json:"outcome"` // succeeded, failed, skipped
	Detail  string        `json:"detail,omitempty"`
	Wall    time.Duration `json:"wall"`
}

// Steps records one job's steps in order into the list it was given, and
// has the job persisted after each. A job runs its steps one after
// another: Steps is not safe for concurrent use.
type Steps struct {
	clock  clock.Clock
	list   *[]Step
	save   func() error
	failed bool
}

// New records steps timed by c into *list; save (if not nil) persists the
// job after each step.
func New(c clock.Clock, list *[]Step, save func() error) *Steps {
	return &Steps{clock: c, list: list, save: save}
}

// Run runs fn as the step name. fn returns a detail for the report; its
// error fails the step (the detail then says what was done and why it
// failed) and is returned. A job that cannot be persisted fails too: its
// record is what the operator and a restarted server go by.
func (s *Steps) Run(name string, fn func() (string, error)) error {
	st := Step{Name: name, Start: s.clock.Now()}
	wall := time.Now()
	detail, err := fn()
	st.End, st.Wall, st.Detail, st.Outcome = s.clock.Now(), time.Since(wall), detail, ferry.OutcomeSucceeded
	if err != nil {
		st.Outcome, st.Detail = ferry.OutcomeFailed, strings.TrimPrefix(detail+": "+err.Error(), ": ")
		s.failed = true
	}
	if perr := s.Add(st); err == nil {
		err = perr
	}
	return err
}

// Skip records a step that did not apply, and why.
func (s *Steps) Skip(name, why string) {
	now := s.clock.Now()
	*s.list = append(*s.list, Step{Name: name, Start: now, End: now, Outcome: ferry.OutcomeSkipped, Detail: why})
}

// Fail records a step that failed without running (another part of the
// job failed), and why.
func (s *Steps) Fail(name, why string) error {
	now := s.clock.Now()
	return s.Add(Step{Name: name, Start: now, End: now, Outcome: ferry.OutcomeFailed, Detail: why})
}

// Add records a step that ran elsewhere (another server's, or one whose
// time was modeled) and persists the job.
func (s *Steps) Add(st Step) error {
	if st.Outcome == ferry.OutcomeFailed {
		s.failed = true
	}
	*s.list = append(*s.list, st)
	if s.save == nil {
		return nil
	}
	if err := s.save(); err != nil {
		return fmt.Errorf("persist the job after step %q: %w", st.Name, err)
	}
	return nil
}

// Failed reports whether a step failed.
func (s *Steps) Failed() bool { return s.failed }
