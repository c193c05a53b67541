package processserver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/pkg/journal"
)

// Reprotect starts replication in the other direction: after a committed
// failover, from the recovered VM to the master target (original location:
// onto the primary's own disks, only what differs is sent; alternate: onto
// new disks, everything is sent); after a committed failback, from the
// primary back to this process server, resynced by hash.
//
// sync says how the failback will synchronize: before (default) or
// during, for which reverse replication moves nothing before the failback
// copies the whole disks (no checksum pre-sync).
func (s *Server) Reprotect(ctx context.Context, vmName string, location ferry.Location, sync ferry.SyncMode) (*Job, error) {
	return s.action(ctx, vmName, ActionReprotect, nil, func(run *jobRun, st *VMState, vm journal.VM) error {
		return s.reprotect(ctx, run, st, vm, location, sync)
	})
}

func (s *Server) reprotect(ctx context.Context, run *jobRun, st *VMState, vm journal.VM, location ferry.Location, sync ferry.SyncMode) error {
	vmName := st.Name
	if st.State == StateFailbackCommitted {
		return run.step("resume forward replication", func() (string, error) {
			epoch, err := s.j.BumpEpoch(ctx, vm.Name)
			if err != nil {
				return "", err
			}
			err = s.ctl.update(vmName, func(st *VMState) {
				st.State, st.Failover, st.Location = "", nil, ""
			})
			return stepf("epoch %d: start the primary's agent with --epoch %d; it compares hashes with this replica and sends only what differs", epoch, epoch), err
		})
	}
	if err := run.step("check prerequisites", func() (string, error) {
		if s.mt == nil {
			return "", ErrNoMasterTarget
		}
		var err error
		if location, err = ferry.ParseLocation(string(location)); err != nil {
			return "", fmt.Errorf("%w: %w", ErrInvalidRequest, err)
		}
		if sync, err = ferry.ParseSyncMode(string(sync)); err != nil {
			return "", fmt.Errorf("%w: %w", ErrInvalidRequest, err)
		}
		return stepf("vm %s committed at point %d, epoch %d; the primary VM stays shut down", vmName, st.Failover.Point, vm.Epoch), nil
	}); err != nil {
		return err
	}
	return run.step("prepare master target", func() (string, error) {
		targets, err := s.mt.prepareReprotect(ctx, vmName, vm.Disks, vm.Epoch, location, sync)
		if err != nil {
			return "", err
		}
		shown := string(location)
		if sync == ferry.SyncDuring {
			shown += " (synchronize during failover only: nothing moves before the failback)"
		}
		if err := s.ctl.update(vmName, func(st *VMState) { st.State, st.Location = StateReprotected, shown }); err != nil {
			return "", err
		}
		if st.Machine.VMwareStyle() {
			return stepf("%s location %v; %s: start the recovered VM's agent with --ps <this process server> --epoch %d: this process server relays its replication to the master target, verified and compressed",
				shown, targets, st.Machine.Kind(), vm.Epoch), nil
		}
		return stepf("%s location %v; start the recovered VM's agent with --ps <master target> --epoch %d", shown, targets, vm.Epoch), nil
	})
}

// Failback fails a reprotected VM over to the primary site: the master
// target shuts the recovered VM down, takes its last writes (only the final
// delta when sync is "before"; the whole disks, without checksums, when
// "during"), applies the point to the primary disks and starts the primary.
func (s *Server) Failback(ctx context.Context, vmName string, sync ferry.SyncMode, point string) (*Job, error) {
	jobs, errs := s.failback(ctx, "", []string{vmName}, sync, point)
	return jobs[0], errs[0]
}

// failback fails vms back, each with its own job. With a group, they are
// the members of that replication group: the master target shuts them all
// down before it applies any point and each fails back to its final
// marker, which carries the group's tag (their common point).
func (s *Server) failback(ctx context.Context, group string, vms []string, sync ferry.SyncMode, point string) ([]*Job, []error) {
	jobs, errs := make([]*Job, len(vms)), make([]error, len(vms))
	fail := func(err error) ([]*Job, []error) {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		return jobs, errs
	}
	sorted := slices.Clone(vms)
	slices.Sort(sorted)
	for _, vm := range sorted {
		defer s.lockVM(vm)()
	}
	for _, vm := range vms {
		st, _, err := s.vmState(ctx, vm)
		if err != nil {
			return fail(err)
		}
		if err := st.require(ActionFailback); err != nil {
			return fail(err)
		}
	}
	if point == "" {
		point = ferry.PointLatest
	}
	if sync == "" {
		sync = ferry.SyncBefore
		// A VM reprotected to synchronize during failover only has
		// nothing to fail back from otherwise.
		for _, vm := range vms {
			if s.mt == nil {
				break
			}
			if rs, err := s.mt.reprotectStatus(ctx, vm); err == nil && rs.SyncDuring {
				sync = ferry.SyncDuring
			}
		}
	}
	runs := make([]*jobRun, len(vms))
	finish := func() ([]*Job, []error) {
		for i, run := range runs {
			if run != nil {
				jobs[i], errs[i] = run.finish(errs[i])
			}
		}
		return jobs, errs
	}
	failRuns := func(err error) ([]*Job, []error) {
		fail(err)
		return finish()
	}
	for i, vm := range vms {
		run, err := s.newJob(ctx, ActionFailback, vm)
		if err != nil {
			return failRuns(err)
		}
		runs[i], jobs[i] = run, run.job
	}
	for i, vm := range vms {
		errs[i] = runs[i].step("check prerequisites", func() (string, error) {
			if s.mt == nil {
				return "", ErrNoMasterTarget
			}
			rs, err := s.mt.reprotectStatus(ctx, vm)
			if err != nil {
				return "", err
			}
			if !rs.Registered {
				return "", fmt.Errorf("vm %s is not replicating to the master target", vm)
			}
			if rs.Points == 0 && !rs.SyncDuring {
				return "", fmt.Errorf("%w: vm %s has no recovery point at the master target yet: it cannot fail back until reverse replication has produced one", ErrState, vm)
			}
			how := ""
			if group != "" {
				how = stepf("; with replication group %s (%s), to its common point", group, strings.Join(vms, ", "))
			}
			return stepf("%s location, %d failback points, %s received; sync %s, point %s%s", rs.Location, rs.Points, cli.Bytes(rs.ReceivedBytes), sync, point, how), nil
		})
	}
	if err := errors.Join(errs...); err != nil {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = fmt.Errorf("%w: another member of replication group %s cannot fail back: %w", ErrState, group, err)
			}
		}
		return finish()
	}
	resps, err := s.mt.failback(ctx, group, vms, sync, point)
	if err != nil {
		return failRuns(err)
	}
	if len(resps) != len(vms) {
		return failRuns(fmt.Errorf("the master target answered for %d VMs, %d were asked", len(resps), len(vms)))
	}
	for i, vm := range vms {
		run, resp := runs[i], resps[i]
		errs[i] = func() error {
			for _, st := range resp.Steps {
				name := st.Name
				st.Name = "master target: " + name
				if err := run.steps.Add(st); err != nil {
					return err
				}
				if st.Outcome != ferry.OutcomeSucceeded {
					return fmt.Errorf("%w: %s: %s", ErrFailover, name, st.Detail)
				}
			}
			if resp.Point == nil {
				return fmt.Errorf("%w: the master target did not finish the failback of vm %s", ErrFailover, vm)
			}
			run.job.Point = resp.Point
			return run.step("record failback", func() (string, error) {
				err := s.ctl.update(vm, func(st *VMState) { st.State = StateFailedBack })
				return stepf("downtime %v; %s received and %s written to the primary disks in %v during downtime; %s received in all since reprotect",
					resp.Downtime.Round(time.Millisecond), cli.Bytes(resp.DowntimeBytes),
					cli.Bytes(resp.AppliedBytes), resp.Applied.Round(time.Millisecond), cli.Bytes(resp.TotalBytes)), err
			})
		}()
	}
	return finish()
}

// commitFailback deletes the recovery-site VM and retires reverse
// replication.
func (s *Server) commitFailback(ctx context.Context, run *jobRun, st *VMState) error {
	if err := run.step("delete recovery-site VM", func() (string, error) {
		if st.Failover == nil {
			return "no recovery-site VM recorded", nil
		}
		id := st.Failover.Instance
		if err := s.compute.Stop(ctx, id); err != nil {
			return "", err
		}
		if err := s.compute.Delete(ctx, id); err != nil {
			return "", err
		}
		s.closeDisks(st.Name + "/failover")
		return stepf("instance %s deleted", id), nil
	}); err != nil {
		return err
	}
	return run.step("retire reverse replication", func() (string, error) {
		if err := s.mt.retire(ctx, st.Name); err != nil {
			return "", err
		}
		return "the recovered VM's agent is fenced", s.ctl.update(st.Name, func(v *VMState) { v.State = StateFailbackCommitted })
	})
}
