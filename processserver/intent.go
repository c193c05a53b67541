package processserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/job"
	"github.com/ferrydr/ferry/pkg/journal"
)

// recoverInterrupted runs when the server starts: jobs that were running
// when it stopped are marked interrupted, and operations that recorded an
// intent are finished (a commit) or undone (a failover's VM is removed, so
// that a retry does not make a second one). An intent the compute layer
// cannot undo now stays, and the VM's next failover tries again.
func (s *Server) recoverInterrupted(ctx context.Context) error {
	jobs, err := s.ctl.jobs("")
	if err != nil {
		return err
	}
	now := s.clock.Now()
	for _, j := range jobs {
		if j.Outcome != ferry.OutcomeRunning {
			continue
		}
		j.Outcome, j.End, j.Waiting = ferry.OutcomeInterrupted, now, ""
		j.Error = "the process server stopped while this job ran"
		if err := s.ctl.putJob(&j); err != nil {
			return err
		}
		s.log.Warn("job interrupted by a restart", "job", j.ID, "type", j.Type, "vm", j.VM)
	}
	states, err := s.ctl.states()
	if err != nil {
		return err
	}
	for _, st := range states {
		if st.Intent == nil {
			continue
		}
		if err := s.resolveIntent(ctx, st.Name); err != nil {
			s.log.Error("an interrupted operation could not be resolved yet", "vm", st.Name, "op", st.Intent.Op, "err", err)
			s.event(Event{Time: now, VM: st.Name, Kind: "interrupted", Detail: err.Error()})
		}
	}
	return nil
}

// resolveIntent finishes or undoes vm's recorded intent.
func (s *Server) resolveIntent(ctx context.Context, vm string) error {
	st, err := s.ctl.state(vm)
	if err != nil || st.Intent == nil {
		return err
	}
	in := st.Intent
	var detail string
	switch in.Op {
	case IntentCommit:
		// The points may be gone already: deleting again is harmless, and
		// the state follows.
		if err := s.j.DeletePoints(ctx, ferry.VMID(vm)); err != nil && !errors.Is(err, journal.ErrNoVM) {
			return fmt.Errorf("finish the interrupted commit of %s: %w", vm, err)
		}
		if err := s.ctl.update(vm, func(st *VMState) { st.State, st.Intent = StateCommitted, nil }); err != nil {
			return err
		}
		detail = "the commit was finished at restart: recovery points deleted, VM committed"
	case IntentFailover:
		if f, ok := s.compute.(InstanceFinder); ok && in.Instance == "" && in.Name != "" {
			// Stopped inside Create: the machine may exist without its ID
			// having been recorded.
			id, found, err := f.Find(ctx, in.Name)
			if err != nil {
				return fmt.Errorf("look for the machine the interrupted failover of %s may have made (%s): %w", vm, in.Name, err)
			}
			if found {
				in.Instance = id
			}
		}
		if in.Instance != "" {
			s.compute.Stop(ctx, in.Instance)
			if err := s.compute.Delete(ctx, in.Instance); err != nil {
				return fmt.Errorf("remove instance %s of the interrupted failover of %s: %w", in.Instance, vm, err)
			}
		}
		if in.Slot != "" {
			s.dropExports(in.Slot)
			s.closeDisks(in.Slot)
			if err := os.RemoveAll(filepath.Join(s.cfg.DataDir, "vms", filepath.FromSlash(in.Slot))); err != nil {
				return err
			}
		}
		if err := s.ctl.update(vm, func(st *VMState) { st.Intent = nil }); err != nil {
			return err
		}
		detail = "the interrupted failover was undone at restart"
		if in.Instance != "" {
			detail += "; instance " + in.Instance + " was removed"
		} else {
			detail += "; the compute layer holds no machine " + in.Name
		}
	default:
		return fmt.Errorf("vm %s: unknown intent %q", vm, in.Op)
	}
	s.log.Warn("interrupted operation resolved", "vm", vm, "op", in.Op, "job", in.Job, "detail", detail)
	if j, err := s.ctl.job(in.Job); err == nil {
		j.Steps = append(j.Steps, job.Step{Name: "resolved after a restart", Start: s.clock.Now(), End: s.clock.Now(), Outcome: ferry.OutcomeSucceeded, Detail: detail})
		if err := s.ctl.putJob(&j); err != nil {
			return err
		}
	}
	e := Event{Time: s.clock.Now(), VM: vm, Kind: "interrupted", Detail: detail}
	if err := s.ctl.addEvent(e); err != nil {
		return err
	}
	if s.hooks != nil {
		s.hooks.send(e)
	}
	return nil
}
