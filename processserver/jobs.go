package processserver

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/clock"
	"github.com/ferrydr/ferry/pkg/job"
)

// Job is one operator action with its steps, persisted and listable.
type Job struct {
	ID       uint64        `json:"id"`
	Type     string        `json:"type"`
	VM       string        `json:"vm"`
	Start    time.Time     `json:"start"`
	End      time.Time     `json:"end"`
	Outcome  ferry.Outcome `json:"outcome"` // running, succeeded, failed
	Error    string        `json:"error,omitempty"`
	Steps    []job.Step    `json:"steps"`
	Point    *ferry.Point  `json:"point,omitempty"`
	Findings []Finding     `json:"findings,omitempty"`
	Console  string        `json:"console,omitempty"`
	// Waiting: a plan job waits for an operator to do this and resume it.
	Waiting string `json:"waiting,omitempty"`
	// Children are the per-VM jobs a plan job ran.
	Children []uint64 `json:"children,omitempty"`
	// By is who started the job (role/name of their certificate).
	By string `json:"by,omitempty"`
}

// jobRun records the steps of one job as they happen.
type jobRun struct {
	s   *Server
	job *Job
	// clock times the job: the server's, or the timeline of the plan
	// group it runs in (clock.WithTimeline).
	clock clock.Clock
	steps *job.Steps
}

func (s *Server) newJob(ctx context.Context, typ, vm string) (*jobRun, error) {
	c := clock.From(ctx, s.clock)
	j := &Job{Type: typ, VM: vm, Start: c.Now(), Outcome: ferry.OutcomeRunning}
	if by, err := s.caller(ctx); err == nil && by != serverItself {
		j.By = by
	}
	if err := s.ctl.putJob(j); err != nil {
		return nil, err
	}
	s.log.Info("job started", "job", j.ID, "type", typ, "vm", vm)
	if f, ok := ctx.Value(jobCreatedKey{}).(func(uint64)); ok {
		f(j.ID)
	}
	return &jobRun{s: s, job: j, clock: c, steps: job.New(c, &j.Steps, func() error { return s.ctl.putJob(j) })}, nil
}

type jobCreatedKey struct{}

// inOrder runs the tasks side by side but lets each start only once the
// one before it has created its jobs (jobs[i] of them) or ended, so that
// the jobs of a plan group are numbered in the plan's order.
func inOrder(ctx context.Context, jobs []int, tasks []func(ctx context.Context)) {
	var wg sync.WaitGroup
	for i, task := range tasks {
		created := make(chan struct{})
		var mu sync.Mutex
		left := jobs[i]
		tctx := context.WithValue(ctx, jobCreatedKey{}, func(uint64) {
			mu.Lock()
			defer mu.Unlock()
			if left--; left == 0 {
				close(created)
			}
		})
		ended := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(ended)
			task(tctx)
		}()
		select {
		case <-created:
		case <-ended:
		}
	}
	wg.Wait()
}

// step runs fn as a named step. fn returns a detail for the report.
func (r *jobRun) step(name string, fn func() (string, error)) error { return r.steps.Run(name, fn) }

// skip records a step that did not apply.
func (r *jobRun) skip(name, why string) { r.steps.Skip(name, why) }

// finish ends the job with err's outcome and persists it.
func (r *jobRun) finish(err error) (*Job, error) {
	r.job.End = r.clock.Now()
	r.job.Outcome = ferry.OutcomeSucceeded
	if err != nil {
		r.job.Outcome, r.job.Error = ferry.OutcomeFailed, err.Error()
	}
	if perr := r.s.ctl.putJob(r.job); perr != nil && err == nil {
		err = perr
	}
	if r.job.Type == ActionTestFailover && r.job.Outcome == ferry.OutcomeSucceeded {
		id, at := r.job.ID, r.job.End
		r.s.note(r.job.VM, func(st *VMState) { st.LastTest = &LastTest{Job: id, At: at} })
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
