package processserver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/clock"
	"github.com/ferrydr/ferry/pkg/journal"
)

// vmState returns the control state of vm, with enabling/protected derived
// from the journal.
func (s *Server) vmState(ctx context.Context, name string) (VMState, journal.VM, error) {
	vm, err := s.j.VM(ctx, ferry.VMID(name))
	if err != nil {
		return VMState{}, vm, err
	}
	st, err := s.ctl.state(name)
	if err != nil {
		return st, vm, err
	}
	if st.State == "" || st.State == StateEnabling || st.State == StateProtected {
		// Derived from the journal: protected once a point exists.
		st.State = StateEnabling
		if vm.Points > 0 {
			st.State = StateProtected
		}
	}
	return st, vm, nil
}

// lockVM serializes actions on one VM.
func (s *Server) lockVM(name string) func() {
	s.vmMu.Lock()
	l, ok := s.vmLocks[name]
	if !ok {
		l = make(chan struct{}, 1)
		s.vmLocks[name] = l
	}
	s.vmMu.Unlock()
	l <- struct{}{}
	return func() { <-l }
}

// action runs an operator's action on one VM: it holds the VM's lock
// (before, when set, runs first under it), checks that the VM's state
// allows the action, starts a job and runs fn as its steps. The error is
// non-nil when the job failed; the job is returned either way once it
// started.
func (s *Server) action(ctx context.Context, vmName, action string, before func() error, fn func(run *jobRun, st *VMState, vm journal.VM) error) (*Job, error) {
	defer s.lockVM(vmName)()
	if before != nil {
		if err := before(); err != nil {
			return nil, err
		}
	}
	st, vm, err := s.vmState(ctx, vmName)
	if err != nil {
		return nil, err
	}
	if err := st.require(action); err != nil {
		return nil, err
	}
	run, err := s.newJob(ctx, action, vmName)
	if err != nil {
		return nil, err
	}
	return run.finish(fn(run, &st, vm))
}

// ChangePoint recreates a failed-over VM from another point (before commit).
func (s *Server) ChangePoint(ctx context.Context, vmName, opt string) (*Job, error) {
	return s.action(ctx, vmName, ActionChangePoint, nil, func(run *jobRun, st *VMState, vm journal.VM) error {
		var point ferry.Point
		if err := run.step("select recovery point", func() (string, error) {
			var ps journal.ProcessStats
			var err error
			point, ps, err = s.resolvePoint(ctx, vm.Name, opt)
			if err != nil {
				return "", err
			}
			return stepf("%s: point %d (%s, %s), %d writes processed first%s", opt, point.ID, point.Consistency, point.Time.Format(time.RFC3339), ps.Writes, s.modeled(ps)), nil
		}); err != nil {
			return err
		}
		run.job.Point = &point
		if err := run.step("remove VM", func() (string, error) {
			old := st.Failover.Instance
			if err := s.compute.Stop(ctx, old); err != nil {
				return "", err
			}
			if err := s.compute.Delete(ctx, old); err != nil {
				return "", err
			}
			s.closeDisks(vmName + "/failover")
			return stepf("instance %s deleted (was point %d)", old, st.Failover.Point), nil
		}); err != nil {
			return err
		}
		// The rebuilt VM joins the network the failover put it on.
		inst, err := s.bringUp(ctx, run, st, vm, point, false, st.Failover.Network)
		if err != nil {
			return err
		}
		if err := s.ctl.update(vmName, func(st *VMState) {
			st.Failover.Instance, st.Failover.Point, st.Intent = inst.ID, point.ID, nil
		}); err != nil {
			return err
		}
		s.readiness(ctx, run, st.Machine, inst)
		return nil
	})
}

// Commit finalizes a failover (every recovery point of the VM is deleted
// and the point can no longer change) or a failback (the recovery-site VM
// is deleted and reverse replication retired).
func (s *Server) Commit(ctx context.Context, vmName string) (*Job, error) {
	return s.action(ctx, vmName, ActionCommit, nil, func(run *jobRun, st *VMState, _ journal.VM) error {
		if st.State == StateFailedBack {
			return s.commitFailback(ctx, run, st)
		}
		return s.commitFailover(ctx, run, st)
	})
}

// commitFailover deletes every recovery point of a failed-over VM: the
// point can no longer change.
func (s *Server) commitFailover(ctx context.Context, run *jobRun, st *VMState) error {
	vmName := st.Name
	return run.step("delete recovery points", func() (string, error) {
		vm, err := s.j.VM(ctx, ferry.VMID(vmName))
		if err != nil {
			return "", err
		}
		// The points and the state live in two files: the intent lets a
		// restart between them finish the commit.
		intent := &Intent{Op: IntentCommit, Job: run.job.ID, Started: clock.From(ctx, s.clock).Now()}
		if err := s.ctl.update(vmName, func(st *VMState) { st.Intent = intent }); err != nil {
			return "", err
		}
		if err := s.j.DeletePoints(ctx, ferry.VMID(vmName)); err != nil {
			return "", errors.Join(err, s.ctl.update(vmName, func(st *VMState) { st.Intent = nil }))
		}
		if err := s.ctl.update(vmName, func(st *VMState) { st.State, st.Intent = StateCommitted, nil }); err != nil {
			return "", err
		}
		return stepf("%d points deleted; instance %s keeps running from point %d", vm.Points, st.Failover.Instance, st.Failover.Point), nil
	})
}

// CleanupTest deletes the VM of a test failover and its scratch disks.
func (s *Server) CleanupTest(ctx context.Context, vmName string) (*Job, error) {
	return s.action(ctx, vmName, ActionCleanupTest, nil, func(run *jobRun, st *VMState, _ journal.VM) error {
		return run.step("delete test VM", func() (string, error) {
			id := st.Test.Instance
			if err := s.compute.Stop(ctx, id); err != nil {
				return "", err
			}
			if err := s.compute.Delete(ctx, id); err != nil {
				return "", err
			}
			slot := vmName + "/test"
			s.dropExports(slot)
			s.closeDisks(slot)
			if err := os.RemoveAll(filepath.Join(s.cfg.DataDir, "vms", filepath.FromSlash(slot))); err != nil {
				return "", err
			}
			return stepf("instance %s and its scratch disks deleted", id), s.ctl.update(vmName, func(st *VMState) { st.Test = nil })
		})
	})
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// State returns a VM's protection state as the server keeps it.
func (s *Server) State(ctx context.Context, vm string) (VMState, error) {
	st, _, err := s.vmState(ctx, vm)
	return st, err
}
