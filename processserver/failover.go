package processserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/pkg/clock"
	"github.com/ferrydr/ferry/pkg/journal"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
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

// Failover runs a test, planned or unplanned failover and returns its job.
// The error is non-nil when the job failed; the job is returned either way
// once it started.
func (s *Server) Failover(ctx context.Context, req FailoverRequest) (*Job, error) {
	defer s.lockVM(req.VM)()
	// What an interrupted failover left is removed first.
	if err := s.resolveIntent(ctx, req.VM); err != nil {
		return nil, fmt.Errorf("%w: vm %s: %w", ErrState, req.VM, err)
	}
	st, vm, err := s.vmState(ctx, req.VM)
	if err != nil {
		return nil, err
	}
	action := map[string]string{FailoverTest: ActionTestFailover, FailoverPlanned: ActionPlannedFailover, FailoverUnplanned: ActionUnplannedFailover}[req.Type]
	if action == "" {
		return nil, fmt.Errorf("%w: failover type %q: want test, planned or unplanned", ErrInvalidRequest, req.Type)
	}
	if err := st.require(action); err != nil {
		return nil, err
	}
	run, err := s.newJob(ctx, action, req.VM)
	if err != nil {
		return nil, err
	}
	err = s.failover(ctx, run, &st, vm, req)
	return run.finish(err)
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
			res, err := s.recv.Command(ctx, name, &ferryv1.Command{Action: &ferryv1.Command_Shutdown{Shutdown: &ferryv1.Shutdown{}}})
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
		os.RemoveAll(filepath.Join(s.cfg.DataDir, "vms", filepath.FromSlash(slot)))
		s.ctl.update(st.Name, func(st *VMState) { st.Intent = nil })
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

// prepareDisks gives the VM its disks: copy-on-write overlays for a test
// failover when compute runs on devices (no copy: start time does not grow
// with disk size), image files materialized from the point otherwise.
func (s *Server) prepareDisks(ctx context.Context, vm journal.VM, point ferry.Point, test bool, slot string) ([]DiskSpec, string, error) {
	dir := filepath.Join(s.cfg.DataDir, "vms", filepath.FromSlash(slot))
	if err := os.RemoveAll(dir); err != nil {
		return nil, "", err
	}
	// Traversable, not listable: a hypervisor that runs as its own user
	// (libvirt's QEMU) opens the images by path.
	if err := mkdirTraversable(s.cfg.DataDir, dir); err != nil {
		return nil, "", err
	}
	dc, devices := s.compute.(DeviceCompute)
	devices = devices && dc.AcceptsDevices()
	// A test failover never copies the point: the compute layer gets
	// copy-on-write overlays as devices, or over NBD when it needs paths.
	overlay := test && (devices || s.nbd != nil)
	var specs []DiskSpec
	var files []*blockdev.File
	fail := func(err error) ([]DiskSpec, string, error) {
		for _, f := range files {
			f.Close()
		}
		return nil, "", err
	}
	for i, d := range vm.Disks {
		if overlay {
			scratch, err := blockdev.CreateFile(filepath.Join(dir, string(d.Name)+".scratch"), d.Size)
			if err != nil {
				return fail(err)
			}
			files = append(files, scratch)
			ov, err := s.j.OpenOverlay(ctx, vm.Name, point.ID, i, s.scratch.wrap(slot, scratch))
			if err != nil {
				return fail(err)
			}
			spec := DiskSpec{Name: string(d.Name), Device: ov}
			if !devices {
				e := s.addExport(NBDExport{Name: exportName(string(vm.Name), "test", string(d.Name)), VM: string(vm.Name), Disk: string(d.Name),
					Point: point, Writable: true, Test: true, slot: slot}, ov)
				spec.Path = e.URI
			}
			specs = append(specs, spec)
			continue
		}
		path := filepath.Join(dir, string(d.Name)+".img")
		f, err := blockdev.CreateFile(path, d.Size)
		if err != nil {
			return fail(err)
		}
		files = append(files, f)
		if err := s.j.Materialize(ctx, vm.Name, point.ID, i, f, true); err != nil {
			return fail(err)
		}
		specs = append(specs, DiskSpec{Name: string(d.Name), Device: f, Path: path})
	}
	s.filesMu.Lock()
	s.files[slot] = files
	s.filesMu.Unlock()
	if overlay && !devices {
		return specs, "copy-on-write overlays of the point served over NBD (nothing copied)", nil
	}
	if overlay {
		return specs, "copy-on-write overlays of the point (nothing copied)", nil
	}
	return specs, "materialized under " + dir, nil
}

// mkdirTraversable makes dir and the directories between root and it with
// mode 0711.
func mkdirTraversable(root, dir string) error {
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return err
	}
	for p := dir; ; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o711); err != nil {
			return err
		}
		if rel, err := filepath.Rel(root, p); err != nil || rel == "." || strings.HasPrefix(rel, "..") {
			return nil
		}
	}
}

// dropExports stops serving the NBD exports of a slot.
func (s *Server) dropExports(slot string) {
	for _, e := range s.Exports() {
		if e.slot == slot {
			s.dropExport(e.Name)
		}
	}
}

// closeDisks closes a slot's files and gives back its scratch quota.
func (s *Server) closeDisks(slot string) {
	defer s.scratch.release(slot)
	s.filesMu.Lock()
	files := s.files[slot]
	delete(s.files, slot)
	s.filesMu.Unlock()
	for _, f := range files {
		f.Close()
	}
}

// ChangePoint recreates a failed-over VM from another point (before commit).
func (s *Server) ChangePoint(ctx context.Context, vmName, opt string) (*Job, error) {
	defer s.lockVM(vmName)()
	st, vm, err := s.vmState(ctx, vmName)
	if err != nil {
		return nil, err
	}
	if err := st.require(ActionChangePoint); err != nil {
		return nil, err
	}
	run, err := s.newJob(ctx, ActionChangePoint, vmName)
	if err != nil {
		return nil, err
	}
	err = func() error {
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
		inst, err := s.bringUp(ctx, run, &st, vm, point, false, st.Failover.Network)
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
	}()
	return run.finish(err)
}

// Commit finalizes a failover (every recovery point of the VM is deleted
// and the point can no longer change) or a failback (the recovery-site VM
// is deleted and reverse replication retired).
func (s *Server) Commit(ctx context.Context, vmName string) (*Job, error) {
	defer s.lockVM(vmName)()
	st, _, err := s.vmState(ctx, vmName)
	if err != nil {
		return nil, err
	}
	if err := st.require(ActionCommit); err != nil {
		return nil, err
	}
	if st.State == StateFailedBack {
		return s.commitFailback(ctx, st)
	}
	run, err := s.newJob(ctx, ActionCommit, vmName)
	if err != nil {
		return nil, err
	}
	err = run.step("delete recovery points", func() (string, error) {
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
			s.ctl.update(vmName, func(st *VMState) { st.Intent = nil })
			return "", err
		}
		if err := s.ctl.update(vmName, func(st *VMState) { st.State, st.Intent = StateCommitted, nil }); err != nil {
			return "", err
		}
		return stepf("%d points deleted; instance %s keeps running from point %d", vm.Points, st.Failover.Instance, st.Failover.Point), nil
	})
	return run.finish(err)
}

// CleanupTest deletes the VM of a test failover and its scratch disks.
func (s *Server) CleanupTest(ctx context.Context, vmName string) (*Job, error) {
	defer s.lockVM(vmName)()
	st, _, err := s.vmState(ctx, vmName)
	if err != nil {
		return nil, err
	}
	if err := st.require(ActionCleanupTest); err != nil {
		return nil, err
	}
	run, err := s.newJob(ctx, ActionCleanupTest, vmName)
	if err != nil {
		return nil, err
	}
	err = run.step("delete test VM", func() (string, error) {
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
	return run.finish(err)
}

// resolvePoint turns a point option into a point of vm, processing first
// for "latest".
func (s *Server) resolvePoint(ctx context.Context, vm ferry.VMID, opt string) (ferry.Point, journal.ProcessStats, error) {
	switch opt {
	case ferry.PointLatest:
		p, ps, err := s.j.CutPoint(ctx, vm, ferry.PointLatest, clock.From(ctx, s.clock).Now())
		s.charge(ctx, ps)
		return p, ps, err
	case ferry.PointLatestProcessed, "":
		p, err := s.j.LatestPoint(ctx, vm)
		return p, journal.ProcessStats{}, err
	case ferry.PointLatestApp:
		pts, err := s.j.Points(ctx, vm)
		if err != nil {
			return ferry.Point{}, journal.ProcessStats{}, err
		}
		for i := len(pts) - 1; i >= 0; i-- {
			if pts[i].Consistency == ferry.App {
				return pts[i], journal.ProcessStats{}, nil
			}
		}
		return ferry.Point{}, journal.ProcessStats{}, fmt.Errorf("vm %s: %w: no app-consistent point", vm, journal.ErrNoPoint)
	}
	id, err := strconv.ParseUint(opt, 10, 64)
	if err != nil {
		return ferry.Point{}, journal.ProcessStats{}, fmt.Errorf("%w: point %q: want latest, latest-processed, latest-app or a point ID", ErrInvalidRequest, opt)
	}
	p, err := s.j.Point(ctx, vm, ferry.Seq(id))
	return p, journal.ProcessStats{}, err
}

// process turns received markers into points up to upTo.
func (s *Server) process(ctx context.Context, vm ferry.VMID, upTo ferry.Seq) (journal.ProcessStats, error) {
	ps, err := s.j.Process(ctx, vm, upTo)
	s.charge(ctx, ps)
	return ps, err
}

// charge spends on a simulated clock the time processing takes on a real
// process server (ProcessRate), so a drill's jobs show it.
func (s *Server) charge(ctx context.Context, ps journal.ProcessStats) {
	if s.clock.Simulated() && s.cfg.ProcessRate > 0 && ps.Bytes > 0 {
		clock.From(ctx, s.clock).Sleep(ctx, time.Duration(float64(ps.Bytes)/float64(s.cfg.ProcessRate)*float64(time.Second)))
	}
}

// modeled says, on a simulated clock, that processing's time was modeled.
func (s *Server) modeled(ps journal.ProcessStats) string {
	if !s.clock.Simulated() || s.cfg.ProcessRate <= 0 || ps.Bytes == 0 {
		return ""
	}
	return stepf("; its time modeled at %s/s", cli.Bytes(s.cfg.ProcessRate))
}

// ProcessAll processes every VM's received data into recovery points.
// Retention and the RPO check follow.
func (s *Server) ProcessAll(ctx context.Context) error {
	err := s.j.ProcessAll(ctx, func(ps journal.ProcessStats) { s.charge(ctx, ps) })
	return errors.Join(err, s.applyRetention(ctx), s.checkRPO(ctx))
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
