package job_test

import (
	"errors"
	"testing"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/clock"
	"github.com/ferrydr/ferry/pkg/job"
)

// TestSteps: steps are recorded in order with their outcome, times on the
// job's clock and detail; a failed step says what was done and why; the
// job is saved after every step, and a job that cannot be saved fails.
func TestSteps(t *testing.T) {
	c := clock.NewVirtual(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	var list []job.Step
	saves := 0
	var saveErr error
	s := job.New(c, &list, func() error { saves++; return saveErr })
	if err := s.Run("create VM", func() (string, error) {
		c.Advance(3 * time.Second)
		return "vm web-test", nil
	}); err != nil {
		t.Fatal(err)
	}
	s.Skip("shut down source", "not asked for")
	boom := errors.New("no such network")
	if err := s.Run("start VM", func() (string, error) { return "defined", boom }); !errors.Is(err, boom) {
		t.Fatalf("failed step returned %v", err)
	}
	if !s.Failed() {
		t.Fatal("a failed step does not fail the job")
	}
	want := []struct {
		name    string
		outcome ferry.Outcome
		detail  string
		took    time.Duration
	}{
		{"create VM", ferry.OutcomeSucceeded, "vm web-test", 3 * time.Second},
		{"shut down source", ferry.OutcomeSkipped, "not asked for", 0},
		{"start VM", ferry.OutcomeFailed, "defined: no such network", 0},
	}
	if len(list) != len(want) {
		t.Fatalf("%d steps, want %d", len(list), len(want))
	}
	for i, w := range want {
		st := list[i]
		if st.Name != w.name || st.Outcome != w.outcome || st.Detail != w.detail || st.End.Sub(st.Start) != w.took {
			t.Errorf("step %d: %+v, want %+v", i, st, w)
		}
	}
	if saves != 2 {
		t.Fatalf("saved %d times, want after each of the 2 steps that ran", saves)
	}
	saveErr = errors.New("disk full")
	if err := s.Run("commit", func() (string, error) { return "", nil }); !errors.Is(err, saveErr) {
		t.Fatalf("a step whose job cannot be saved returned %v", err)
	}
	if err := s.Fail("wait for the group", "vm db did not shut down"); !errors.Is(err, saveErr) {
		t.Fatalf("fail: %v", err)
	}
	if last := list[len(list)-1]; last.Outcome != ferry.OutcomeFailed || last.Detail != "vm db did not shut down" {
		t.Fatalf("last step %+v", last)
	}
}

// TestAdd: a step that ran elsewhere fails the job only when it failed.
func TestAdd(t *testing.T) {
	var list []job.Step
	s := job.New(clock.NewVirtual(time.Unix(0, 0)), &list, nil)
	if err := s.Add(job.Step{Name: "master target: shut down recovered VM", Outcome: ferry.OutcomeSucceeded}); err != nil || s.Failed() {
		t.Fatalf("a succeeded step: failed %v, %v", s.Failed(), err)
	}
	if err := s.Add(job.Step{Name: "master target: apply point", Outcome: ferry.OutcomeFailed}); err != nil || !s.Failed() {
		t.Fatalf("a failed step: failed %v, %v", s.Failed(), err)
	}
	if len(list) != 2 {
		t.Fatalf("%d steps", len(list))
	}
}
