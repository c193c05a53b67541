package processserver

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/cespare/xxhash/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// Recovery point names an operator may use instead of an ID.
const (
	// PointLatest first cuts a point at the end of everything received.
	PointLatest = "latest"
	// PointLatestProcessed is the newest point already cut.
	PointLatestProcessed = "latest-processed"
)

// recovery implements the operator API.
type recovery struct {
	ferryv1.UnimplementedRecoveryServer
	s *Server
}

func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, journal.ErrNoVM), errors.Is(err, journal.ErrNoPoint), errors.Is(err, journal.ErrNoDisk):
		code = codes.NotFound
	case errors.Is(err, journal.ErrInconsistent):
		code = codes.FailedPrecondition
	case errors.Is(err, journal.ErrChecksum):
		code = codes.DataLoss
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return status.Error(code, err.Error())
}

// ResolvePoint turns an operator's point name into a recovery point of vm.
func (s *Server) ResolvePoint(ctx context.Context, vm journal.VMID, name string) (journal.Point, error) {
	switch name {
	case PointLatest:
		return s.j.CutPoint(ctx, vm, PointLatest, time.Now())
	case PointLatestProcessed, "":
		return s.j.LatestPoint(ctx, vm)
	}
	id, err := strconv.ParseUint(name, 10, 64)
	if err != nil {
		return journal.Point{}, status.Errorf(codes.InvalidArgument, "point %q: want %s, %s or a point ID", name, PointLatest, PointLatestProcessed)
	}
	return s.j.Point(ctx, vm, journal.Seq(id))
}

func (r *recovery) ListVMs(ctx context.Context, _ *ferryv1.ListVMsRequest) (*ferryv1.ListVMsResponse, error) {
	vms, err := r.s.j.VMs(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &ferryv1.ListVMsResponse{}
	for _, vm := range vms {
		out.Vms = append(out.Vms, wire.VMProto(vm))
	}
	return out, nil
}

func (r *recovery) ListPoints(ctx context.Context, req *ferryv1.ListPointsRequest) (*ferryv1.ListPointsResponse, error) {
	pts, err := r.s.j.Points(ctx, journal.VMID(req.GetVm()))
	if err != nil {
		return nil, toStatus(err)
	}
	out := &ferryv1.ListPointsResponse{}
	for _, p := range pts {
		out.Points = append(out.Points, wire.PointProto(p))
	}
	return out, nil
}

// exportChunk is the most data one export message carries.
const exportChunk = 1 << 20

func (r *recovery) ExportPoint(req *ferryv1.ExportPointRequest, stream ferryv1.Recovery_ExportPointServer) error {
	ctx := stream.Context()
	name := journal.VMID(req.GetVm())
	vm, err := r.s.j.VM(ctx, name)
	if err != nil {
		return toStatus(err)
	}
	disk, err := vm.DiskIndex(journal.DiskID(req.GetDisk()))
	if err != nil {
		return toStatus(err)
	}
	p, err := r.s.ResolvePoint(ctx, name, req.GetPoint())
	if err != nil {
		return toStatus(err)
	}
	if err := stream.Send(&ferryv1.ExportChunk{DiskSize: uint64(vm.Disks[disk].Size), PointId: uint64(p.ID)}); err != nil {
		return err
	}
	err = r.s.j.ReadPoint(ctx, name, p.ID, disk, func(e journal.Extent) error {
		for off := int64(0); off < int64(len(e.Data)); off += exportChunk {
			data := e.Data[off:min(off+exportChunk, int64(len(e.Data)))]
			msg := &ferryv1.ExportChunk{Offset: uint64(e.Offset + off), Data: data, Xxhash: xxhash.Sum64(data)}
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return toStatus(fmt.Errorf("export vm %s disk %s point %d: %w", name, req.GetDisk(), p.ID, err))
	}
	return nil
}

func (r *recovery) VerifyPoint(ctx context.Context, req *ferryv1.VerifyPointRequest) (*ferryv1.VerifyPointResponse, error) {
	name := journal.VMID(req.GetVm())
	p, err := r.s.ResolvePoint(ctx, name, req.GetPoint())
	if err != nil {
		return nil, toStatus(err)
	}
	st, err := r.s.j.Verify(ctx, name, p.ID)
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.VerifyPointResponse{PointId: uint64(p.ID), WritesChecked: uint64(st.Writes), BytesChecked: uint64(st.Bytes)}, nil
}
