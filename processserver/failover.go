package processserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/pkg/clock"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/wire"
)

// Failover types.
const (
	FailoverTest      = "test"
	FailoverPlanned   = "planned"
	FailoverUnplanned = "unplanned"
)

// FailoverRequest asks for a failover of one VM.
type FailoverRequest struct {
	VM   string
	Type string
	// Point: latest, latest-processed, latest-app or an ID. Planned
	// failover always uses the final point after shutdown.
	Point string
	// Network for a test failover: must be isolated.
	Network string
	// Shutdown: unplanned failover first tries to shut the source down
	// and sync its last changes.
	Shutdown bool
}

// Failover runs a test, planned or unplanned failover and returns its job.
// The error is non-nil when the job failed; the job is returned either way
// once it started.
func (s *Server) Failover(ctx context.Context, req FailoverRequest) (*Job, error) {
	action := map[string]string{FailoverTest: ActionTestFailover, FailoverPlanned: ActionPlannedFailover, FailoverUnplanned: ActionUnplannedFailover}[req.Type]
	// What an interrupted failover left is removed first.
	before := func() error {
		if err := s.resolveIntent(ctx, req.VM); err != nil {
			return fmt.Errorf("%w: vm %s: %w", ErrState, req.VM, err)
		}
		if _, err := s.j.VM(ctx, ferry.VMID(req.VM)); err != nil {
			return err
		}
		if action == "" {
			return fmt.Errorf("%w: failover type %q: want test, planned or unplanned", ErrInvalidRequest, req.Type)
		}
		return nil
	}
	return s.action(ctx, req.VM, action, before, func(run *jobRun, st *VMState, vm journal.VM) error {
		return s.failover(ctx, run, st, vm, req)
	})
}

func (s *Server) failover(ctx context.Context, run *jobRun, st *VMState, vm journal.VM, req FailoverRequest) error {
	name := ferry.VMID(req.VM)
	test := req.Type == FailoverTest
	network := req.Network
	if test && network == "" {
		network = "test-" + req.VM
	}
	if err := run.step("check prerequisites", func() (string, error) {
		if req.Type == FailoverPlanned && req.Point != "" && req.Point != ferry.PointLatest {
			return "", fmt.Errorf("%w: a planned failover always uses the final point after shutdown, not %q", ErrInvalidRequest, req.Point)
		}
		if vm.Points == 0 {
			return "", fmt.Errorf("vm %s has no recovery point", req.VM)
		}
		reasons := FailoverProcessingReasons(st.Machine)
		return stepf("state %s, %d recovery points, %d disks, machine %s (failover processing: %s)", st.State, vm.Points, len(vm.Disks),
			orNone(st.Machine.OS), orNone(strings.Join(reasons, "; "))), nil
	}); err != nil {
		return err
	}

	var point ferry.Point
	shutdownOK := false
	if req.Type == FailoverPlanned || (req.Type == FailoverUnplanned && req.Shutdown) {
		var final uint64
		err := run.step("shut down source", func() (string, error) {
			res, err := s.recv.Command(ctx, name, wire.ShutdownCommand(false, ""))
			if err != nil {
				return "", err
			}
			if !res.GetOk() {
				return "", errors.New(res.GetError())
			}
			final = res.GetFinalSeq()
			return stepf("source shut down; final marker %d durable", final), nil
		})
		if err != nil && req.Type == FailoverPlanned {
			return fmt.Errorf("%w: planned failover needs the source to shut down: %w", ErrFailover, err)
		}
		if err == nil {
			shutdownOK = true
			err = run.step("synchronize latest data", func() (string, error) {
				ps, err := s.process(ctx, name, ferry.Seq(final))
				if err != nil {
					return "", err
				}
				if point, err = s.j.Point(ctx, name, ferry.Seq(final)); err != nil {
					return "", err
				}
				return stepf("processed %d writes (%s) up to the final point %d%s", ps.Writes, cli.Bytes(ps.Bytes), point.ID, s.modeled(ps)), nil
			})
			if err != nil {
				return err
			}
		} else {
			run.skip("synchronize latest data", "the source did not shut down; unplanned failover proceeds with the chosen point")
		}
	} else if req.Type == FailoverUnplanned {
		run.skip("shut down source", "not asked for")
	}
	if !shutdownOK {
		opt := req.Point
		if opt == "" {
			opt = ferry.PointLatest
		}
		if err := run.step("select recovery point", func() (string, error) {
			var ps journal.ProcessStats
			var err error
			point, ps, err = s.resolvePoint(ctx, name, opt)
			if err != nil {
				return "", err
			}
			detail := stepf("%s: point %d (%s, %s)", opt, point.ID, point.Consistency, point.Time.Format(time.RFC3339))
			if ps.Writes > 0 {
				detail += stepf(" after processing %d pending writes (%s)%s", ps.Writes, cli.Bytes(ps.Bytes), s.modeled(ps))
			}
			return detail, nil
		}); err != nil {
			return err
		}
	}
	run.job.Point = &point

	inst, err := s.bringUp(ctx, run, st, vm, point, test, network)
	if err != nil {
		return err
	}
	if !test {
		// The old direction's agent must not write this VM's replica again.
		if err := run.step("fence the source's agent", func() (string, error) {
			if err := s.recv.Fence(ctx, name); err != nil {
				return "", err
			}
			epoch, err := s.j.BumpEpoch(ctx, name)
			return stepf("epoch is now %d: the source's agent is refused", epoch), err
		}); err != nil {
			return err
		}
	}
	// The machine runs and the source is fenced: from here the failover
	// stands, and a restart keeps it (the readiness checks only report).
	now := clock.From(ctx, s.clock).Now()
	if err := s.ctl.update(req.VM, func(st *VMState) {
		st.Intent = nil
		if test {
			st.Test = &TestFailover{Instance: inst.ID, Point: point.ID, Network: inst.Network, Started: now}
		} else {
			st.State = StateFailedOver
			st.Failover = &ActiveFailover{Type: req.Type, Instance: inst.ID, Point: point.ID, Network: inst.Network, Started: now}
		}
	}); err != nil {
		return err
	}
	s.readiness(ctx, run, st.Machine, inst)
	return nil
}

// bringUp creates the VM from point's disks, processes it if the machine
// needs that, and starts it.
func (s *Server) bringUp(ctx context.Context, run *jobRun, st *VMState, vm journal.VM, point ferry.Point, test bool, network string) (Instance, error) {
	var inst Instance
	slot := st.Name + "/failover"
	if test {
		slot = st.Name + "/test"
	}
	created := false
	// Whatever fails from here on leaves no VM, export or scratch file.
	undo := func() {
		if created {
			if err := s.compute.Delete(context.WithoutCancel(ctx), inst.ID); err != nil {
				s.log.Error("remove the VM of a failed failover", "vm", st.Name, "instance", inst.ID, "err", err)
			}
		}
		s.dropExports(slot)
		s.closeDisks(slot)
		if err := os.RemoveAll(filepath.Join(s.cfg.DataDir, "vms", filepath.FromSlash(slot))); err != nil {
			s.log.Error("remove the disks of a failed failover", "vm", st.Name, "err", err)
		}
		// Left standing, the intent makes the next failover undo again.
		s.note(st.Name, func(st *VMState) { st.Intent = nil })
	}
	err := run.step("create VM", func() (string, error) {
		// Recorded before anything is made: a restart undoes what this
		// failover made, instead of leaving it beside the next attempt's.
		name := st.Name
		if test {
			name += "-test"
		}
		intent := &Intent{Op: IntentFailover, Job: run.job.ID, Slot: slot, Name: name, Started: clock.From(ctx, s.clock).Now()}
		if err := s.ctl.update(st.Name, func(st *VMState) { st.Intent = intent }); err != nil {
			return "", err
		}
		disks, how, err := s.prepareDisks(ctx, vm, point, test, slot)
		if err != nil {
			return "", err
		}
		inst, err = s.compute.Create(ctx, VMSpec{Name: name, Test: test, Network: network, Disks: disks, Machine: st.Machine})
		if err != nil {
			return "", err
		}
		created = true
		if err := s.ctl.update(st.Name, func(st *VMState) {
			if st.Intent != nil {
				st.Intent.Instance = inst.ID
			}
		}); err != nil {
			return "", err
		}
		if test && !inst.Isolated {
			return "", fmt.Errorf("network %q is not isolated: a test failover must not reach production", network)
		}
		return stepf("instance %s on network %s from point %d; disks %s", inst.ID, orNone(inst.Network), point.ID, how), nil
	})
	if err != nil {
		undo()
		return inst, err
	}
	if reasons := FailoverProcessingReasons(st.Machine); len(reasons) > 0 {
		err = run.step("failover processing", func() (string, error) {
			p, ok := s.compute.(FailoverProcessor)
			if !ok {
				return strings.Join(reasons, "; ") + " (the compute layer has nothing to do for it)", nil
			}
			return strings.Join(reasons, "; "), p.ProcessFailover(ctx, inst.ID, reasons)
		})
		if err != nil {
			undo()
			return inst, err
		}
	} else {
		run.skip("failover processing", "not needed for this machine")
	}
	err = run.step("start VM", func() (string, error) { return "", s.compute.Start(ctx, inst.ID) })
	if err != nil {
		undo()
	}
	return inst, err
}

// readiness records what would block connecting to the VM, and its
// console. A compute that can probe the machine is asked (state, address,
// the SSH or RDP port); otherwise the findings come from what the agent
// reported of the machine.
func (s *Server) readiness(ctx context.Context, run *jobRun, m Machine, inst Instance) {
	run.step("readiness checks", func() (string, error) {
		var findings []Finding
		p, probes := s.compute.(MachineProber)
		if probes {
			findings = s.probeReadiness(ctx, p, m, inst, s.cfg.ProbeTimeout)
		}
		console, err := s.compute.Console(ctx, inst.ID)
		if err != nil {
			console = ""
		}
		run.job.Console = console
		if probes {
			findings = append(findings, consoleFinding(console))
		} else {
			findings = Readiness(m, inst, console)
		}
		run.job.Findings = findings
		bad, unknown := 0, 0
		for _, f := range findings {
			switch {
			case f.Unknown:
				unknown++
			case !f.OK:
				bad++
			}
		}
		detail := stepf("%d checks, %d findings", len(findings), bad)
		if unknown > 0 {
			detail += stepf(", %d unknown", unknown)
		}
		return detail, nil
	})
}
