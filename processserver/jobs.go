package processserver

import (
	"context"
	"fmt"
	"time"

	"github.com/ferrydr/ferry/pkg/journal"
)

// Job is one operator action with its steps, persisted and listable.
type Job struct {
	ID       uint64         `json:"id"`
	Type     string         `json:"type"`
	VM       string         `json:"vm"`
	Start    time.Time      `json:"start"`
	End      time.Time      `json:"end"`
	Outcome  string         `json:"outcome"` // running, succeeded, failed
	Error    string         `json:"error,omitempty"`
	Steps    []Step         `json:"steps"`
	Point    *journal.Point `json:"point,omitempty"`
	Findings []Finding      `json:"findings,omitempty"`
	Console  string         `json:"console,omitempty"`
	// Waiting: a plan job waits for an operator to do this and resume it.
	Waiting string `json:"waiting,omitempty"`
	// Children are the per-VM jobs a plan job ran.
	Children []uint64 `json:"children,omitempty"`
	// By is who started the job (role/name of their certificate).
	By string `json:"by,omitempty"`
}

// Step is one step of a job. Start and End are on the server's clock
// (virtual in a drill); Wall is the machine time the step really took.
type Step struct {
	Name    string        `json:"name"`
	Start   time.Time     `json:"start"`
	End     time.Time     `json:"end"`
	Outcome string        `json:"outcome"` // succeeded, failed, skipped
	Detail  string        `json:"detail,omitempty"`
	Wall    time.Duration `json:"wall"`
}

// Job outcomes.
const (
	OutcomeRunning   = "running"
	OutcomeSucceeded = "succeeded"
	OutcomeFailed    = "failed"
	OutcomeSkipped   = "skipped"
	// OutcomeInterrupted: the process server stopped while the job ran.
	OutcomeInterrupted = "interrupted"
)

// jobRun records the steps of one job as they happen.
type jobRun struct {
	s   *Server
	job *Job
}

func (s *Server) newJob(typ, vm string) (*jobRun, error) {
	j := &Job{Type: typ, VM: vm, Start: s.clock.Now(), Outcome: OutcomeRunning}
	if err := s.ctl.putJob(j); err != nil {
		return nil, err
	}
	s.log.Info("job started", "job", j.ID, "type", typ, "vm", vm)
	return &jobRun{s: s, job: j}, nil
}

// step runs fn as a named step. fn returns a detail for the report.
func (r *jobRun) step(name string, fn func() (string, error)) error {
	st := Step{Name: name, Start: r.s.clock.Now()}
	wall := time.Now()
	detail, err := fn()
	st.End, st.Wall, st.Detail = r.s.clock.Now(), time.Since(wall), detail
	st.Outcome = OutcomeSucceeded
	if err != nil {
		st.Outcome = OutcomeFailed
		if st.Detail == "" {
			st.Detail = err.Error()
		} else {
			st.Detail += ": " + err.Error()
		}
	}
	r.job.Steps = append(r.job.Steps, st)
	r.s.ctl.putJob(r.job)
	return err
}

// skip records a step that did not apply.
func (r *jobRun) skip(name, why string) {
	now := r.s.clock.Now()
	r.job.Steps = append(r.job.Steps, Step{Name: name, Start: now, End: now, Outcome: OutcomeSkipped, Detail: why})
}

// finish ends the job with err's outcome and persists it.
func (r *jobRun) finish(err error) (*Job, error) {
	r.job.End = r.s.clock.Now()
	r.job.Outcome = OutcomeSucceeded
	if err != nil {
		r.job.Outcome, r.job.Error = OutcomeFailed, err.Error()
	}
	if perr := r.s.ctl.putJob(r.job); perr != nil && err == nil {
		err = perr
	}
	r.s.log.Info("job ended", "job", r.job.ID, "type", r.job.Type, "vm", r.job.VM, "outcome", r.job.Outcome, "err", r.job.Error,
		"duration", r.job.End.Sub(r.job.Start))
	return r.job, err
}

// Jobs returns the jobs of vm (all VMs when empty), oldest first.
func (s *Server) Jobs(ctx context.Context, vm string) ([]Job, error) { return s.ctl.jobs(vm) }

// Job returns one job.
func (s *Server) Job(ctx context.Context, id uint64) (Job, error) { return s.ctl.job(id) }

func stepf(format string, args ...any) string { return fmt.Sprintf(format, args...) }
