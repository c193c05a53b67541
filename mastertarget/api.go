package mastertarget

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/pkg/ingest"
	"github.com/ferrydr/ferry/pkg/job"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// PrepareReprotect registers a VM for reverse replication.
func (s *Server) PrepareReprotect(ctx context.Context, req *ferryv1.PrepareReprotectRequest) (*ferryv1.PrepareReprotectResponse, error) {
	name := req.GetVm()
	loc := ferry.Location(req.GetLocation())
	if loc != ferry.LocationOriginal && loc != ferry.LocationAlternate {
		return nil, status.Errorf(codes.InvalidArgument, "location %q: want original or alternate", loc)
	}
	if len(req.GetDisks()) == 0 || len(req.GetDisks()) > 64 || req.GetEpoch() == 0 {
		return nil, status.Errorf(codes.InvalidArgument, "vm %s: 1 to 64 disks and an epoch are required", name)
	}
	// Names become file names under the alternate directory: only plain
	// names, as the process server accepted them from the agent.
	if err := ferry.ValidName(name); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "vm name: %v", err)
	}
	seen := map[string]bool{}
	for _, d := range req.GetDisks() {
		if err := ferry.ValidName(d.GetName()); err != nil || seen[d.GetName()] {
			return nil, status.Errorf(codes.InvalidArgument, "vm %s: disk name %q: invalid or listed twice (%v)", name, d.GetName(), err)
		}
		seen[d.GetName()] = true
		if err := ingest.CheckDiskSize(d.GetName(), d.GetSizeBytes(), s.cfg.MaxDiskBytes); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "vm %s: %v", name, err)
		}
	}
	disks := wire.Disks(req.GetDisks())
	if st, ok := s.cfg.Primary.(PrimaryStopper); ok {
		if err := st.Stop(ctx, name); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "vm %s: the primary machine must stay shut down during reprotect: %v", name, err)
		}
	}
	// A VM from an earlier cycle starts over.
	if err := s.recv.Fence(ctx, ferry.VMID(name)); err != nil {
		return nil, err
	}
	if err := s.j.DeleteVM(ctx, ferry.VMID(name)); err != nil && !errors.Is(err, journal.ErrNoVM) {
		return nil, err
	}
	if err := s.j.CreateVM(ctx, journal.VM{Name: ferry.VMID(name), Disks: disks, Epoch: ferry.Epoch(req.GetEpoch()), BlockSize: blockdev.BlockSize}); err != nil {
		return nil, err
	}
	t := &target{VM: name, Location: loc, Disks: disks, SyncDuring: req.GetSyncDuring()}
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
		return nil, status.Errorf(codes.FailedPrecondition, "vm %s: prepare %s location: %v", name, loc, err)
	}
	if err := s.putTarget(t); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.targets[name] = devs
	s.mu.Unlock()
	s.log.Info("reverse replication prepared", "vm", name, "location", loc, "epoch", req.GetEpoch(), "sync_during", t.SyncDuring)
	return &ferryv1.PrepareReprotectResponse{Targets: t.Paths}, nil
}

// Failback shuts the recovered VM down, takes its last writes, applies the
// point to the primary disks and starts the primary VM.
func (s *Server) Failback(ctx context.Context, req *ferryv1.MTFailbackRequest) (*ferryv1.MTFailbackResponse, error) {
	out, err := s.failback(ctx, []string{req.GetVm()}, ferry.SyncMode(req.GetSync()), req.GetPoint(), "", nil)
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// FailbackGroup fails a replication group's members back together: all
// are shut down before any point is applied, and their final markers share
// one group tag, the group's common point.
func (s *Server) FailbackGroup(ctx context.Context, req *ferryv1.MTFailbackGroupRequest) (*ferryv1.MTFailbackGroupResponse, error) {
	if err := ferry.ValidName(req.GetGroup()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "group name: %v", err)
	}
	if n := len(req.GetVms()); n < 2 || n > 16 {
		return nil, status.Errorf(codes.InvalidArgument, "group %s: a replication group has 2 to 16 VMs, not %d", req.GetGroup(), n)
	}
	tag := fmt.Sprintf("%sfailback-%d", ingest.ReservedTagPrefix+req.GetGroup()+"/", s.clock.Now().UnixNano())
	point := req.GetPoint()
	var fixed map[string]ferry.Seq
	switch point {
	case "", ferry.PointLatest:
		point = ferry.PointLatest
	case ferry.PointLatestApp:
		// The members' newest common app-consistent multi-VM point.
		var err error
		if fixed, err = s.commonApp(ctx, req.GetGroup(), req.GetVms()); err != nil {
			return nil, err
		}
	default:
		return nil, status.Errorf(codes.InvalidArgument, "point %q: a group fails back to latest or latest-app", point)
	}
	out, err := s.failback(ctx, req.GetVms(), ferry.SyncMode(req.GetSync()), point, tag, fixed)
	if err != nil {
		return nil, err
	}
	return &ferryv1.MTFailbackGroupResponse{Results: out, Tag: tag}, nil
}

// fbVM is one VM's failback in progress.
type fbVM struct {
	name   string
	vmid   ferry.VMID
	t      *target
	resp   *ferryv1.MTFailbackResponse
	steps  []job.Step
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
func (s *Server) failback(ctx context.Context, vms []string, syncMode ferry.SyncMode, point, tag string, fixed map[string]ferry.Seq) ([]*ferryv1.MTFailbackResponse, error) {
	if !syncMode.Valid() {
		return nil, status.Errorf(codes.InvalidArgument, "sync %q: want before or during", syncMode)
	}
	if point != ferry.PointLatest && point != ferry.PointLatestApp {
		return nil, status.Errorf(codes.InvalidArgument, "point %q: failback offers latest or latest-app", point)
	}
	if err := s.j.ProcessAll(ctx, nil); err != nil {
		return nil, err
	}
	var fs []*fbVM
	seen := map[string]bool{}
	for _, name := range vms {
		if seen[name] {
			return nil, status.Errorf(codes.InvalidArgument, "vm %s is listed twice", name)
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
			return nil, status.Errorf(codes.FailedPrecondition, "vm %s is failing back already", f.name)
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
	answer := func() ([]*ferryv1.MTFailbackResponse, error) {
		out := make([]*ferryv1.MTFailbackResponse, len(fs))
		for i, f := range fs {
			out[i] = f.resp
			out[i].Steps = wire.StepsProto(f.steps)
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
	t, err := s.target(name)
	if err != nil {
		return nil, err
	}
	if t == nil || t.Retired {
		return nil, status.Errorf(codes.FailedPrecondition, "vm %s is not replicating to this master target", name)
	}
	vm, err := s.j.VM(ctx, vmid)
	if err != nil {
		return nil, err
	}
	if t.SyncDuring && syncMode == ferry.SyncBefore {
		return nil, status.Errorf(codes.FailedPrecondition, "vm %s was reprotected to synchronize during failover only: nothing was copied before, so it fails back with sync during", name)
	}
	if vm.Points == 0 && !t.SyncDuring {
		return nil, status.Errorf(codes.FailedPrecondition, "vm %s has no recovery point at the master target yet: it cannot fail back until reverse replication has produced one", name)
	}
	if point == ferry.PointLatestApp && !s.hasApp(ctx, vmid) {
		return nil, status.Errorf(codes.FailedPrecondition, "vm %s has no app-consistent point at the master target", name)
	}
	f := &fbVM{name: name, vmid: vmid, t: t, resp: &ferryv1.MTFailbackResponse{}}
	f.run = job.New(s.clock, &f.steps, nil)
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
	f.resp.Point = wire.PointProto(f.point)
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
		f.resp.AppliedBytes, f.resp.AppliedNanos = uint64(written), int64(took)
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
	f.resp.DowntimeNanos = int64(s.clock.Now().Sub(f.t0))
	f.resp.DowntimeBytes = uint64(s.recv.ReceivedBytes(f.vmid) - f.before)
	f.resp.TotalBytes = uint64(s.recv.ReceivedBytes(f.vmid))
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
func (s *Server) Retire(ctx context.Context, req *ferryv1.VMRequest) (*ferryv1.RetireResponse, error) {
	name := req.GetVm()
	t, err := s.target(name)
	if err != nil || t == nil {
		return nil, status.Errorf(codes.NotFound, "vm %s is not known to this master target", name)
	}
	if err := s.recv.Fence(ctx, ferry.VMID(name)); err != nil {
		return nil, err
	}
	if _, err := s.j.BumpEpoch(ctx, ferry.VMID(name)); err != nil && !errors.Is(err, journal.ErrNoVM) {
		return nil, err
	}
	t.Retired = true
	if err := s.putTarget(t); err != nil {
		return nil, err
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
	return &ferryv1.RetireResponse{}, nil
}

// ReprotectStatus reports a VM's reverse replication.
func (s *Server) ReprotectStatus(ctx context.Context, req *ferryv1.VMRequest) (*ferryv1.ReprotectStatusResponse, error) {
	name := req.GetVm()
	t, err := s.target(name)
	if err != nil {
		return nil, err
	}
	out := &ferryv1.ReprotectStatusResponse{}
	if t == nil || t.Retired {
		return out, nil
	}
	out.Registered, out.Location, out.SyncDuring = true, string(t.Location), t.SyncDuring
	vm, err := s.j.VM(ctx, ferry.VMID(name))
	if err != nil {
		return nil, err
	}
	out.Epoch, out.DurableSeq, out.Consistent, out.Points = uint64(vm.Epoch), uint64(vm.LastSeq), vm.Consistent, uint32(vm.Points)
	if p, ok := s.recv.Progress(ferry.VMID(name)); ok {
		out.ResyncProgress = p
	}
	out.ReceivedBytes = uint64(s.recv.ReceivedBytes(ferry.VMID(name)))
	return out, nil
}
