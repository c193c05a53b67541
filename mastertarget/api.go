package mastertarget

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/pkg/ingest"
	"github.com/ferrydr/ferry/pkg/job"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/wire"
)

// Reprotect is a process server's request to receive a VM's reverse
// replication.
type Reprotect struct {
	VM       string
	Disks    []ferry.Disk
	Epoch    ferry.Epoch
	Location ferry.Location
	// SyncDuring: the failback synchronizes during failover only; the
	// agent sends nothing before.
	SyncDuring bool
}

// PrepareReprotect registers a VM for reverse replication and returns
// where its disks are.
func (s *Server) PrepareReprotect(ctx context.Context, req Reprotect) ([]string, error) {
	name := req.VM
	loc := req.Location
	if loc != ferry.LocationOriginal && loc != ferry.LocationAlternate {
		return nil, fmt.Errorf("%w: location %q: want original or alternate", ErrInvalidRequest, loc)
	}
	if len(req.Disks) == 0 || len(req.Disks) > 64 || req.Epoch == 0 {
		return nil, fmt.Errorf("%w: vm %s: 1 to 64 disks and an epoch are required", ErrInvalidRequest, name)
	}
	// Names become file names under the alternate directory: only plain
	// names, as the process server accepted them from the agent.
	if err := ferry.ValidName(name); err != nil {
		return nil, fmt.Errorf("%w: vm name: %w", ErrInvalidRequest, err)
	}
	seen := map[string]bool{}
	for _, d := range req.Disks {
		if err := ferry.ValidName(string(d.Name)); err != nil || seen[string(d.Name)] {
			return nil, fmt.Errorf("%w: vm %s: disk name %q: invalid or listed twice (%w)", ErrInvalidRequest, name, d.Name, err)
		}
		seen[string(d.Name)] = true
		if d.Size < 0 {
			return nil, fmt.Errorf("%w: vm %s: disk %s of %d bytes", ErrInvalidRequest, name, d.Name, d.Size)
		}
		if err := ingest.CheckDiskSize(string(d.Name), uint64(d.Size), s.cfg.MaxDiskBytes); err != nil {
			return nil, fmt.Errorf("%w: vm %s: %w", ErrInvalidRequest, name, err)
		}
	}
	disks := req.Disks
	if st, ok := s.cfg.Primary.(PrimaryStopper); ok {
		if err := st.Stop(ctx, name); err != nil {
			return nil, fmt.Errorf("%w: vm %s: the primary machine must stay shut down during reprotect: %w", ErrState, name, err)
		}
	}
	// A VM from an earlier cycle starts over.
	if err := s.recv.Fence(ctx, ferry.VMID(name)); err != nil {
		return nil, err
	}
	if err := s.j.DeleteVM(ctx, ferry.VMID(name)); err != nil && !errors.Is(err, journal.ErrNoVM) {
		return nil, err
	}
	if err := s.j.CreateVM(ctx, journal.VM{Name: ferry.VMID(name), Disks: disks, Epoch: req.Epoch, BlockSize: blockdev.BlockSize}); err != nil {
		return nil, err
	}
	t := &target{VM: name, Location: loc, Disks: disks, SyncDuring: req.SyncDuring}
	var devs []blockdev.Device
	var err error
	if loc == ferry.LocationOriginal {
		// The primary's own disks are the base: reverse replication
		// compares with them and sends only what differs.
		if devs, err = s.cfg.Primary.OriginalDisks(ctx, name, disks); err == nil {
			err = s.j.AttachBase(ctx, ferry.VMID(name), devs)
		}
		for _, d := range disks {
			t.Paths = append(t.Paths, "original:"+string(d.Name))
		}
	} else {
		// New disks hold zeros: the agent copies everything.
		devs, t.Paths, err = s.cfg.Primary.CreateDisks(ctx, name, disks)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: vm %s: prepare %s location: %w", ErrState, name, loc, err)
	}
	if err := s.store.putTarget(t); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.targets[name] = devs
	s.mu.Unlock()
	s.log.Info("reverse replication prepared", "vm", name, "location", loc, "epoch", req.Epoch, "sync_during", t.SyncDuring)
	return t.Paths, nil
}

// Failback shuts the recovered VM down, takes its last writes, applies the
// point to the primary disks and starts the primary VM.
func (s *Server) Failback(ctx context.Context, vm string, sync ferry.SyncMode, point string) (FailbackResult, error) {
	out, err := s.failback(ctx, []string{vm}, sync, point, "", nil)
	if err != nil {
		return FailbackResult{}, err
	}
	return out[0], nil
}

// FailbackResult is the master target's account of one VM's failback.
type FailbackResult struct {
	Steps []job.Step
	// Point is what the primary's disks now hold; nil when the failback
	// did not get that far.
	Point *ferry.Point
	// Downtime runs from the recovered VM's shutdown to the primary's
	// start; Applied is the time writing the primary's disks took.
	Downtime, Applied time.Duration
	// DowntimeBytes were received during downtime, TotalBytes since the
	// reprotect; AppliedBytes were written to the primary's disks.
	DowntimeBytes, AppliedBytes, TotalBytes int64
}

// FailbackGroup fails a replication group's members back together: all
// are shut down before any point is applied, and their final markers share
// one group tag, the group's common point.
// It returns the members' results in their order and the group's tag.
func (s *Server) FailbackGroup(ctx context.Context, group string, vms []string, sync ferry.SyncMode, point string) ([]FailbackResult, string, error) {
	if err := ferry.ValidName(group); err != nil {
		return nil, "", fmt.Errorf("%w: group name: %w", ErrInvalidRequest, err)
	}
	if n := len(vms); n < 2 || n > 16 {
		return nil, "", fmt.Errorf("%w: group %s: a replication group has 2 to 16 VMs, not %d", ErrInvalidRequest, group, n)
	}
	tag := fmt.Sprintf("%sfailback-%d", ingest.ReservedTagPrefix+group+"/", s.clock.Now().UnixNano())
	var fixed map[string]ferry.Seq
	switch point {
	case "", ferry.PointLatest:
		point = ferry.PointLatest
	case ferry.PointLatestApp:
		// The members' newest common app-consistent multi-VM point.
		var err error
		if fixed, err = s.commonApp(ctx, group, vms); err != nil {
			return nil, "", err
		}
	default:
		return nil, "", fmt.Errorf("%w: point %q: a group fails back to latest or latest-app", ErrInvalidRequest, point)
	}
	out, err := s.failback(ctx, vms, sync, point, tag, fixed)
	return out, tag, err
}

// fbVM is one VM's failback in progress.
type fbVM struct {
	name   string
	vmid   ferry.VMID
	t      *target
	res    FailbackResult
	run    *job.Steps
	before int64     // bytes received before the recovered VM was shut down
	t0     time.Time // the recovered VM's shutdown began
	final  uint64
	point  ferry.Point
	// fixed is the point a group's member fails back to when it is not
	// its final one (the group's common app-consistent point).
	fixed ferry.Seq
}

// step runs one step of f's failback and records it for its response.
func (s *Server) step(f *fbVM, name string, fn func() (string, error)) error {
	return f.run.Run(name, fn)
}

// PresyncBound is the delta below which synchronization before failover
// stops folding the recovered VM's points into the target disks and shuts
// it down: what arrives later is applied during downtime.
const PresyncBound = 8 << 20

// failback fails vms back: each is checked, synchronized (sync "before":
// the newest point is folded into the target disks while the recovered VM
// still runs), shut down (all of them before any is applied; with a tag,
// their final markers carry it), processed, applied and started. A VM that
// does not shut down stops the failback of every VM asked for, with
// nothing applied and nothing lost.
func (s *Server) failback(ctx context.Context, vms []string, syncMode ferry.SyncMode, point, tag string, fixed map[string]ferry.Seq) ([]FailbackResult, error) {
	if !syncMode.Valid() {
		return nil, fmt.Errorf("%w: sync %q: want before or during", ErrInvalidRequest, syncMode)
	}
	if point != ferry.PointLatest && point != ferry.PointLatestApp {
		return nil, fmt.Errorf("%w: point %q: failback offers latest or latest-app", ErrInvalidRequest, point)
	}
	if err := s.j.ProcessAll(ctx, nil); err != nil {
		return nil, err
	}
	var fs []*fbVM
	seen := map[string]bool{}
	for _, name := range vms {
		if seen[name] {
			return nil, fmt.Errorf("%w: vm %s is listed twice", ErrInvalidRequest, name)
		}
		seen[name] = true
		f, err := s.checkFailback(ctx, name, syncMode, point)
		if err != nil {
			return nil, err
		}
		f.fixed = fixed[name]
		fs = append(fs, f)
	}
	s.mu.Lock()
	for _, f := range fs {
		if s.failbacks[f.name] {
			s.mu.Unlock()
			return nil, fmt.Errorf("%w: vm %s is failing back already", ErrState, f.name)
		}
	}
	for _, f := range fs {
		s.failbacks[f.name] = true
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		for _, f := range fs {
			delete(s.failbacks, f.name)
		}
		s.mu.Unlock()
	}()
	answer := func() ([]FailbackResult, error) {
		out := make([]FailbackResult, len(fs))
		for i, f := range fs {
			out[i] = f.res
		}
		return out, nil
	}
	if syncMode == ferry.SyncBefore {
		for _, f := range fs {
			if s.step(f, "synchronize before shutdown", func() (string, error) { return s.presync(ctx, f, point) }) != nil {
				s.stopOthers(fs, fmt.Sprintf("vm %s could not be synchronized: no VM was shut down and nothing was applied", f.name))
				return answer()
			}
		}
	}
	// Every member is shut down before any point is applied: their final
	// points hold no write made after another member stopped.
	var wg sync.WaitGroup
	t0 := s.clock.Now()
	for _, f := range fs {
		f.before, f.t0 = s.recv.ReceivedBytes(f.vmid), t0
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.step(f, "shut down recovered VM", func() (string, error) { return s.shutdown(ctx, f, syncMode, tag) })
		}()
	}
	wg.Wait()
	var moved int64
	for _, f := range fs {
		if f.run.Failed() {
			s.stopOthers(fs, fmt.Sprintf("vm %s did not shut down: no point was applied; this VM is shut down at the recovery site with all its data here: start it there again, or fail the group back once %s shuts down", f.name, f.name))
			return answer()
		}
		moved += s.recv.ReceivedBytes(f.vmid) - f.before
	}
	if s.cfg.Cost != nil && moved > 0 {
		// What moved over the link during downtime takes its time; the
		// members share the link.
		took, how := s.cfg.Cost.Link(moved)
		s.clock.Sleep(ctx, took)
		for _, f := range fs {
			f.run.Add(job.Step{Name: "receive final data", Start: s.clock.Now().Add(-took), End: s.clock.Now(), Outcome: ferry.OutcomeSucceeded,
				Detail: fmt.Sprintf("%s over the link from the recovery site (for all %d VMs failing back together) in %v (%s)",
					cli.Bytes(moved), len(fs), took.Round(time.Millisecond), how)})
		}
	}
	for _, f := range fs {
		s.finishFailback(ctx, f, syncMode, point, tag)
	}
	return answer()
}

// stopOthers ends the failback of every VM whose steps did not fail yet
// with a failed step saying why: the PS must not take a VM for failed back
// because its own steps went well.
func (s *Server) stopOthers(fs []*fbVM, why string) {
	for _, g := range fs {
		if !g.run.Failed() {
			g.run.Fail("wait for the group", why)
		}
	}
}

// checkFailback checks that vm can fail back now.
func (s *Server) checkFailback(ctx context.Context, name string, syncMode ferry.SyncMode, point string) (*fbVM, error) {
	vmid := ferry.VMID(name)
	t, err := s.store.target(name)
	if err != nil {
		return nil, err
	}
	if t == nil || t.Retired {
		return nil, fmt.Errorf("%w: vm %s is not replicating to this master target", ErrState, name)
	}
	vm, err := s.j.VM(ctx, vmid)
	if err != nil {
		return nil, err
	}
	if t.SyncDuring && syncMode == ferry.SyncBefore {
		return nil, fmt.Errorf("%w: vm %s was reprotected to synchronize during failover only: nothing was copied before, so it fails back with sync during", ErrState, name)
	}
	if vm.Points == 0 && !t.SyncDuring {
		return nil, fmt.Errorf("%w: vm %s has no recovery point at the master target yet: it cannot fail back until reverse replication has produced one", ErrState, name)
	}
	if point == ferry.PointLatestApp && !s.hasApp(ctx, vmid) {
		return nil, fmt.Errorf("%w: vm %s has no app-consistent point at the master target", ErrState, name)
	}
	f := &fbVM{name: name, vmid: vmid, t: t}
	f.run = job.New(s.clock, &f.res.Steps, nil)
	return f, nil
}

// presync folds the newest point (the newest app-consistent one for a
// latest-app failback) into the target disks while the recovered VM runs,
// round after round until a round folds less than PresyncBound: only what
// arrives after it is written to the primary during downtime.
func (s *Server) presync(ctx context.Context, f *fbVM, point string) (string, error) {
	devs, err := s.devices(f.name)
	if err != nil {
		return "", err
	}
	var folded int64
	rounds := 0
	for rounds < 8 {
		if point != ferry.PointLatestApp {
			s.checkpoint(ctx, f)
		}
		if _, err := s.j.Process(ctx, f.vmid, ferry.Seq(math.MaxUint64)); err != nil {
			return "", err
		}
		var upTo ferry.Point
		if f.fixed != 0 {
			upTo, err = s.j.Point(ctx, f.vmid, f.fixed)
		} else if point == ferry.PointLatestApp {
			upTo, err = s.latestApp(ctx, f.vmid)
		} else {
			var pts []ferry.Point
			pts, err = s.j.Points(ctx, f.vmid)
			if err == nil && len(pts) > 0 {
				upTo = pts[len(pts)-1]
			}
		}
		if err != nil {
			return "", err
		}
		vm, err := s.j.VM(ctx, f.vmid)
		if err != nil {
			return "", err
		}
		if upTo.ID <= vm.BaseSeq {
			break
		}
		rounds++
		st, err := s.j.Trim(ctx, f.vmid, upTo.ID, devs)
		if err != nil {
			return "", err
		}
		folded += st.BytesApplied
		if st.BytesApplied < PresyncBound {
			break
		}
	}
	return fmt.Sprintf("%s of the recovered VM's points written to the %s disks in %d rounds while it ran (until a round moved less than %s)",
		cli.Bytes(folded), f.t.Location, rounds, cli.Bytes(PresyncBound)), nil
}

// checkpoint asks the recovered VM's agent for a point behind everything
// written so far and waits (up to 10 s) until it is here and processed,
// so that a synchronization round folds all of it. Without it (an agent
// that cannot cut one now) the round folds the newest point there is.
func (s *Server) checkpoint(ctx context.Context, f *fbVM) {
	pts, err := s.j.Points(ctx, f.vmid)
	if err != nil {
		return
	}
	var before ferry.Seq
	if len(pts) > 0 {
		before = pts[len(pts)-1].ID
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := s.recv.Command(cctx, f.vmid, wire.CheckpointCommand("failback-sync"))
	if err != nil || !res.GetOk() {
		s.log.Info("no checkpoint for this synchronization round", "vm", f.name, "err", err, "agent", res.GetError())
		return
	}
	for cctx.Err() == nil {
		moved, streaming := s.recv.Moved(f.vmid)
		if !streaming {
			return // the agent is gone: no point will come
		}
		if _, err := s.j.Process(cctx, f.vmid, ferry.Seq(math.MaxUint64)); err != nil {
			return
		}
		if pts, err := s.j.Points(cctx, f.vmid); err != nil || (len(pts) > 0 && pts[len(pts)-1].ID > before) {
			return
		}
		select {
		case <-cctx.Done():
		case <-moved:
		}
	}
}

// shutdown asks the recovered VM's agent to shut its machine down and
// waits for its final marker.
func (s *Server) shutdown(ctx context.Context, f *fbVM, sync ferry.SyncMode, tag string) (string, error) {
	res, err := s.recv.Command(ctx, f.vmid, wire.ShutdownCommand(sync == ferry.SyncDuring, tag))
	if err != nil {
		return "", err
	}
	if !res.GetOk() {
		return "", fmt.Errorf("vm %s: %s; nothing was applied, the recovered VM's data is all at the master target and it may be failed back again", f.name, res.GetError())
	}
	f.final = res.GetFinalSeq()
	how := "final delta"
	if sync == ferry.SyncDuring {
		how = "whole disks, no checksums"
	}
	return fmt.Sprintf("recovered VM shut down; %s received up to marker %d", how, f.final), nil
}

// finishFailback processes f's final data, applies the point to the target
// disks and starts the primary.
func (s *Server) finishFailback(ctx context.Context, f *fbVM, sync ferry.SyncMode, point, tag string) {
	if s.step(f, "process final data", func() (string, error) {
		st, err := s.j.Process(ctx, f.vmid, ferry.Seq(f.final))
		if err != nil {
			return "", err
		}
		switch {
		case f.fixed != 0:
			f.point, err = s.j.Point(ctx, f.vmid, f.fixed)
		case point == ferry.PointLatest:
			f.point, err = s.j.Point(ctx, f.vmid, ferry.Seq(f.final))
		default:
			f.point, err = s.latestApp(ctx, f.vmid)
		}
		if err == nil && tag != "" && f.fixed == 0 && f.point.Tag != tag {
			err = fmt.Errorf("final point %d carries %q, not the group's tag %q", f.point.ID, f.point.Tag, tag)
		}
		return fmt.Sprintf("%d writes verified; point %d (%s)", st.Writes, f.point.ID, f.point.Consistency), err
	}) != nil {
		return
	}
	applied := f.point
	f.res.Point = &applied
	if s.step(f, "apply point to primary disks", func() (string, error) {
		devs, err := s.devices(f.name)
		if err != nil {
			return "", err
		}
		compare := f.t.Location == ferry.LocationOriginal && sync == ferry.SyncBefore
		var read, written int64
		start := s.clock.Now()
		wall := time.Now()
		for i, d := range devs {
			st, err := s.j.Apply(ctx, f.vmid, f.point.ID, i, d, compare)
			if err != nil {
				return "", err
			}
			read, written = read+st.Read, written+st.Written
		}
		took := time.Since(wall)
		how := "measured"
		if s.cfg.Cost != nil {
			// Writing the primary's disks takes its time too.
			took, how = s.cfg.Cost.Disk(written)
			s.clock.Sleep(ctx, took)
		} else {
			took = s.clock.Now().Sub(start)
		}
		f.res.AppliedBytes, f.res.Applied = written, took
		return fmt.Sprintf("%s location: %s of %s of journaled writes written during downtime in %v (%s)", f.t.Location,
			cli.Bytes(written), cli.Bytes(read), took.Round(time.Millisecond), how), nil
	}) != nil {
		return
	}
	if s.step(f, "start primary VM", func() (string, error) {
		return "", s.cfg.Primary.Start(ctx, f.name, f.t.Location)
	}) != nil {
		return
	}
	f.res.Downtime = s.clock.Now().Sub(f.t0)
	f.res.DowntimeBytes = s.recv.ReceivedBytes(f.vmid) - f.before
	f.res.TotalBytes = s.recv.ReceivedBytes(f.vmid)
}

func (s *Server) hasApp(ctx context.Context, vm ferry.VMID) bool {
	_, err := s.latestApp(ctx, vm)
	return err == nil
}

func (s *Server) latestApp(ctx context.Context, vm ferry.VMID) (ferry.Point, error) {
	pts, err := s.j.Points(ctx, vm)
	if err != nil {
		return ferry.Point{}, err
	}
	for i := len(pts) - 1; i >= 0; i-- {
		if pts[i].Consistency == ferry.App {
			return pts[i], nil
		}
	}
	return ferry.Point{}, fmt.Errorf("vm %s: %w: no app-consistent point", vm, journal.ErrNoPoint)
}

// Retire ends reverse replication after a committed failback: the agent on
// the recovered VM is fenced and its stream refused from then on.
func (s *Server) Retire(ctx context.Context, name string) error {
	t, err := s.store.target(name)
	if err != nil || t == nil {
		return fmt.Errorf("%w: vm %s is not known to this master target", ErrUnknownVM, name)
	}
	if err := s.recv.Fence(ctx, ferry.VMID(name)); err != nil {
		return err
	}
	if _, err := s.j.BumpEpoch(ctx, ferry.VMID(name)); err != nil && !errors.Is(err, journal.ErrNoVM) {
		return err
	}
	t.Retired = true
	if err := s.store.putTarget(t); err != nil {
		return err
	}
	s.alerts.Forget(name)
	s.rpoAlert.DeleteLabelValues(name)
	s.mu.Lock()
	for _, d := range s.targets[name] {
		if f, ok := d.(*blockdev.File); ok {
			f.Close()
		}
	}
	delete(s.targets, name)
	s.mu.Unlock()
	return nil
}

// ReverseStatus is a VM's reverse replication as the master target sees it.
type ReverseStatus struct {
	Registered     bool
	Location       ferry.Location
	SyncDuring     bool
	Epoch          ferry.Epoch
	DurableSeq     ferry.Seq
	Consistent     bool
	Points         int
	ResyncProgress float64 // 0 when none was reported
	ReceivedBytes  int64
}

// ReprotectStatus reports a VM's reverse replication.
func (s *Server) ReprotectStatus(ctx context.Context, name string) (ReverseStatus, error) {
	t, err := s.store.target(name)
	if err != nil {
		return ReverseStatus{}, err
	}
	if t == nil || t.Retired {
		return ReverseStatus{}, nil
	}
	vm, err := s.j.VM(ctx, ferry.VMID(name))
	if err != nil {
		return ReverseStatus{}, err
	}
	out := ReverseStatus{Registered: true, Location: t.Location, SyncDuring: t.SyncDuring, Epoch: vm.Epoch, DurableSeq: vm.LastSeq,
		Consistent: vm.Consistent, Points: vm.Points, ReceivedBytes: s.recv.ReceivedBytes(ferry.VMID(name))}
	if p, ok := s.recv.Progress(ferry.VMID(name)); ok {
		out.ResyncProgress = p
	}
	return out, nil
}
