package mastertarget

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/ingest"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// PrepareReprotect registers a VM for reverse replication.
func (s *Server) PrepareReprotect(ctx context.Context, req *ferryv1.PrepareReprotectRequest) (*ferryv1.PrepareReprotectResponse, error) {
	name := req.GetVm()
	loc := req.GetLocation()
	if loc != LocationOriginal && loc != LocationAlternate {
		return nil, status.Errorf(codes.InvalidArgument, "location %q: want original or alternate", loc)
	}
	if len(req.GetDisks()) == 0 || len(req.GetDisks()) > 64 || req.GetEpoch() == 0 {
		return nil, status.Errorf(codes.InvalidArgument, "vm %s: 1 to 64 disks and an epoch are required", name)
	}
	// Names become file names under the alternate directory: only plain
	// names, as the process server accepted them from the agent.
	if err := ingest.ValidName(name); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "vm name: %v", err)
	}
	seen := map[string]bool{}
	for _, d := range req.GetDisks() {
		if err := ingest.ValidName(d.GetName()); err != nil || seen[d.GetName()] {
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
	if err := s.recv.Fence(ctx, journal.VMID(name)); err != nil {
		return nil, err
	}
	if err := s.j.DeleteVM(ctx, journal.VMID(name)); err != nil && !errors.Is(err, journal.ErrNoVM) {
		return nil, err
	}
	if err := s.j.CreateVM(ctx, journal.VM{Name: journal.VMID(name), Disks: disks, Epoch: journal.Epoch(req.GetEpoch()), BlockSize: blockdev.BlockSize}); err != nil {
		return nil, err
	}
	t := &target{VM: name, Location: loc, Disks: disks}
	var devs []blockdev.Device
	var err error
	if loc == LocationOriginal {
		// The primary's own disks are the base: reverse replication
		// compares with them and sends only what differs.
		if devs, err = s.cfg.Primary.OriginalDisks(ctx, name, disks); err == nil {
			err = s.j.AttachBase(ctx, journal.VMID(name), devs)
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
	s.log.Info("reverse replication prepared", "vm", name, "location", loc, "epoch", req.GetEpoch())
	return &ferryv1.PrepareReprotectResponse{Targets: t.Paths}, nil
}

// Failback shuts the recovered VM down, takes its last writes, applies the
// point to the primary disks and starts the primary VM.
func (s *Server) Failback(ctx context.Context, req *ferryv1.MTFailbackRequest) (*ferryv1.MTFailbackResponse, error) {
	name := req.GetVm()
	vmid := journal.VMID(name)
	t, err := s.target(name)
	if err != nil {
		return nil, err
	}
	if t == nil || t.Retired {
		return nil, status.Errorf(codes.FailedPrecondition, "vm %s is not replicating to this master target", name)
	}
	if req.GetSync() != "before" && req.GetSync() != "during" {
		return nil, status.Errorf(codes.InvalidArgument, "sync %q: want before or during", req.GetSync())
	}
	if req.GetPoint() != "latest" && req.GetPoint() != "latest-app" {
		return nil, status.Errorf(codes.InvalidArgument, "point %q: failback offers latest or latest-app", req.GetPoint())
	}
	if err := s.ProcessAll(ctx); err != nil {
		return nil, err
	}
	vm, err := s.j.VM(ctx, vmid)
	if err != nil {
		return nil, err
	}
	if vm.Points == 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "vm %s has no recovery point at the master target yet: it cannot fail back until reverse replication has produced one", name)
	}
	if req.GetPoint() == "latest-app" && !s.hasApp(ctx, vmid) {
		return nil, status.Errorf(codes.FailedPrecondition, "vm %s has no app-consistent point at the master target", name)
	}
	resp := &ferryv1.MTFailbackResponse{}
	step := func(n string, fn func() (string, error)) error {
		st := &ferryv1.JobStep{Name: n, StartUnixNano: s.clock.Now().UnixNano()}
		wall := time.Now()
		detail, err := fn()
		st.EndUnixNano, st.WallNanos, st.Detail, st.Outcome = s.clock.Now().UnixNano(), int64(time.Since(wall)), detail, "succeeded"
		if err != nil {
			st.Outcome, st.Detail = "failed", strings.TrimPrefix(detail+": "+err.Error(), ": ")
		}
		resp.Steps = append(resp.Steps, st)
		return err
	}
	before := s.recv.ReceivedBytes(vmid)
	t0 := s.clock.Now()
	var final uint64
	if err := step("shut down recovered VM", func() (string, error) {
		res, err := s.recv.Command(ctx, vmid, &ferryv1.Command{Action: &ferryv1.Command_Shutdown{Shutdown: &ferryv1.Shutdown{FullCopy: req.GetSync() == "during"}}})
		if err != nil {
			return "", err
		}
		if !res.GetOk() {
			return "", errors.New(res.GetError())
		}
		final = res.GetFinalSeq()
		if moved := s.recv.ReceivedBytes(vmid) - before; s.clock.Simulated() && moved > 0 {
			// What moved over the link during downtime takes its time.
			s.clock.Sleep(ctx, time.Duration(float64(moved)/float64(s.cfg.LinkRate)*float64(time.Second)))
		}
		how := "final delta"
		if req.GetSync() == "during" {
			how = "whole disks, no checksums"
		}
		return fmt.Sprintf("recovered VM shut down; %s received up to marker %d", how, final), nil
	}); err != nil {
		return resp, nil
	}
	var point journal.Point
	if err := step("process final data", func() (string, error) {
		st, err := s.j.Process(ctx, vmid, journal.Seq(final))
		if err != nil {
			return "", err
		}
		if req.GetPoint() == "latest" {
			point, err = s.j.Point(ctx, vmid, journal.Seq(final))
		} else {
			point, err = s.latestApp(ctx, vmid)
		}
		return fmt.Sprintf("%d writes verified; point %d (%s)", st.Writes, point.ID, point.Consistency), err
	}); err != nil {
		return resp, nil
	}
	resp.Point = wire.PointProto(point)
	if err := step("apply point to primary disks", func() (string, error) {
		s.mu.Lock()
		devs := s.targets[name]
		s.mu.Unlock()
		compare := t.Location == LocationOriginal && req.GetSync() == "before"
		var read, written int64
		for i, d := range devs {
			st, err := s.j.Apply(ctx, vmid, point.ID, i, d, compare)
			if err != nil {
				return "", err
			}
			read, written = read+st.Read, written+st.Written
		}
		resp.AppliedBytes = uint64(written)
		return fmt.Sprintf("%s location: %d of %d changed bytes written", t.Location, written, read), nil
	}); err != nil {
		return resp, nil
	}
	if err := step("start primary VM", func() (string, error) {
		return "", s.cfg.Primary.Start(ctx, name, t.Location)
	}); err != nil {
		return resp, nil
	}
	resp.DowntimeNanos = int64(s.clock.Now().Sub(t0))
	resp.DowntimeBytes = uint64(s.recv.ReceivedBytes(vmid) - before)
	resp.TotalBytes = uint64(s.recv.ReceivedBytes(vmid))
	return resp, nil
}

func (s *Server) hasApp(ctx context.Context, vm journal.VMID) bool {
	_, err := s.latestApp(ctx, vm)
	return err == nil
}

func (s *Server) latestApp(ctx context.Context, vm journal.VMID) (journal.Point, error) {
	pts, err := s.j.Points(ctx, vm)
	if err != nil {
		return journal.Point{}, err
	}
	for i := len(pts) - 1; i >= 0; i-- {
		if pts[i].Consistency == journal.App {
			return pts[i], nil
		}
	}
	return journal.Point{}, fmt.Errorf("vm %s: %w: no app-consistent point", vm, journal.ErrNoPoint)
}

// Retire ends reverse replication after a committed failback: the agent on
// the recovered VM is fenced and its stream refused from then on.
func (s *Server) Retire(ctx context.Context, req *ferryv1.VMRequest) (*ferryv1.RetireResponse, error) {
	name := req.GetVm()
	t, err := s.target(name)
	if err != nil || t == nil {
		return nil, status.Errorf(codes.NotFound, "vm %s is not known to this master target", name)
	}
	if err := s.recv.Fence(ctx, journal.VMID(name)); err != nil {
		return nil, err
	}
	if _, err := s.j.BumpEpoch(ctx, journal.VMID(name)); err != nil && !errors.Is(err, journal.ErrNoVM) {
		return nil, err
	}
	t.Retired = true
	if err := s.putTarget(t); err != nil {
		return nil, err
	}
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
	out.Registered, out.Location = true, t.Location
	vm, err := s.j.VM(ctx, journal.VMID(name))
	if err != nil {
		return nil, err
	}
	out.Epoch, out.DurableSeq, out.Consistent, out.Points = uint64(vm.Epoch), uint64(vm.LastSeq), vm.Consistent, uint32(vm.Points)
	if p, ok := s.recv.Progress(journal.VMID(name)); ok {
		out.ResyncProgress = p
	}
	out.ReceivedBytes = uint64(s.recv.ReceivedBytes(journal.VMID(name)))
	return out, nil
}
