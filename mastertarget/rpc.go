package mastertarget

import (
	"context"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/retention"
	"github.com/ferrydr/ferry/pkg/tlsca"
	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// api serves the master target's gRPC API to the process server: it
// converts requests to Ferry's types, calls the Server and maps its errors
// to gRPC codes. Only this file (and pkg/wire) speaks the generated types.
type api struct {
	ferryv1.UnimplementedMasterTargetServer
	s *Server
}

// toStatus answers an error of the Server over gRPC.
func toStatus(err error) error { return wire.Status(err, statusCodes) }

// statusCodes answers each sentinel with one gRPC code.
var statusCodes = []wire.Code{
	{Err: ErrInvalidRequest, Code: codes.InvalidArgument},
	{Err: ErrUnknownVM, Code: codes.NotFound},
	{Err: journal.ErrNoVM, Code: codes.NotFound},
	{Err: journal.ErrNoPoint, Code: codes.NotFound},
	{Err: ErrState, Code: codes.FailedPrecondition},
	{Err: journal.ErrInconsistent, Code: codes.FailedPrecondition},
	{Err: ErrNotCut, Code: codes.Aborted},
	{Err: journal.ErrChecksum, Code: codes.DataLoss},
	{Err: context.Canceled, Code: codes.Canceled},
}

func (a *api) PrepareReprotect(ctx context.Context, req *ferryv1.PrepareReprotectRequest) (*ferryv1.PrepareReprotectResponse, error) {
	targets, err := a.s.PrepareReprotect(ctx, Reprotect{VM: req.GetVm(), Disks: wire.Disks(req.GetDisks()), Epoch: ferry.Epoch(req.GetEpoch()),
		Location: ferry.Location(req.GetLocation()), SyncDuring: req.GetSyncDuring()})
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.PrepareReprotectResponse{Targets: targets}, nil
}

func (a *api) Failback(ctx context.Context, req *ferryv1.MTFailbackRequest) (*ferryv1.MTFailbackResponse, error) {
	res, err := a.s.Failback(ctx, req.GetVm(), ferry.SyncMode(req.GetSync()), req.GetPoint())
	if err != nil {
		return nil, toStatus(err)
	}
	return failbackProto(res), nil
}

func (a *api) FailbackGroup(ctx context.Context, req *ferryv1.MTFailbackGroupRequest) (*ferryv1.MTFailbackGroupResponse, error) {
	res, tag, err := a.s.FailbackGroup(ctx, req.GetGroup(), req.GetVms(), ferry.SyncMode(req.GetSync()), req.GetPoint())
	if err != nil {
		return nil, toStatus(err)
	}
	out := &ferryv1.MTFailbackGroupResponse{Tag: tag}
	for _, r := range res {
		out.Results = append(out.Results, failbackProto(r))
	}
	return out, nil
}

func failbackProto(r FailbackResult) *ferryv1.MTFailbackResponse {
	out := &ferryv1.MTFailbackResponse{Steps: wire.StepsProto(r.Steps), DowntimeNanos: int64(r.Downtime), DowntimeBytes: uint64(r.DowntimeBytes),
		TotalBytes: uint64(r.TotalBytes), AppliedBytes: uint64(r.AppliedBytes), AppliedNanos: int64(r.Applied)}
	if r.Point != nil {
		out.Point = wire.PointProto(*r.Point)
	}
	return out
}

func (a *api) Retire(ctx context.Context, req *ferryv1.VMRequest) (*ferryv1.RetireResponse, error) {
	if err := a.s.Retire(ctx, req.GetVm()); err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.RetireResponse{}, nil
}

func (a *api) ReprotectStatus(ctx context.Context, req *ferryv1.VMRequest) (*ferryv1.ReprotectStatusResponse, error) {
	rs, err := a.s.ReprotectStatus(ctx, req.GetVm())
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.ReprotectStatusResponse{Registered: rs.Registered, Location: string(rs.Location), SyncDuring: rs.SyncDuring,
		Epoch: uint64(rs.Epoch), DurableSeq: uint64(rs.DurableSeq), Consistent: rs.Consistent, Points: uint32(rs.Points),
		ResyncProgress: rs.ResyncProgress, ReceivedBytes: uint64(rs.ReceivedBytes)}, nil
}

func (a *api) GroupPoint(ctx context.Context, req *ferryv1.MTGroupPointRequest) (*ferryv1.GroupPointResponse, error) {
	gp, err := a.s.GroupPoint(ctx, req.GetGroup(), req.GetVms(), req.GetApp(), time.Duration(req.GetHoldTimeoutMillis())*time.Millisecond)
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.GroupPointResponse{Tag: gp.Tag, Vms: gp.VMs, MaxHoldNanos: int64(gp.MaxHold)}, nil
}

func (a *api) ListEvents(ctx context.Context, req *ferryv1.ListEventsRequest) (*ferryv1.ListEventsResponse, error) {
	evs, err := a.s.Events(req.GetVm())
	if err != nil {
		return nil, toStatus(err)
	}
	out := &ferryv1.ListEventsResponse{}
	for _, e := range evs {
		out.Events = append(out.Events, &ferryv1.Event{TimeUnixNano: e.Time.UnixNano(), Vm: e.VM, Kind: e.Kind, Detail: e.Detail})
	}
	return out, nil
}

// onHello answers a reverse-replicating agent's hello: it cuts points at
// the failback policy's frequencies, and sends nothing before its failback
// when the VM synchronizes during failover only.
func (s *Server) onHello(ctx context.Context, h *ferryv1.Hello, ack *ferryv1.HelloAck) error {
	ack.Policy = wire.PolicyProto(retention.Failback(), nil)
	t, err := s.store.target(h.GetVm())
	if err != nil {
		return err
	}
	ack.DeferSync = t != nil && t.SyncDuring && !s.failingBack(h.GetVm())
	return nil
}

// serveGRPC listens and serves reverse replication and the API the
// process server uses.
func (s *Server) serveGRPC() error {
	var err error
	if s.lis, err = net.Listen("tcp", s.cfg.Listen); err != nil {
		return fmt.Errorf("listen %s: %w", s.cfg.Listen, err)
	}
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(8 << 20), grpc.MaxSendMsgSize(8 << 20), grpc.MaxConcurrentStreams(64)}
	if s.cfg.TLS != nil {
		opts = append(opts, tlsca.ServerOptions(s.cfg.TLS, tlsca.Policy{
			// The recovery-site process server relays the streams of
			// VMware-style VMs (it checked their agent's certificate).
			"ferry.v1.Replication":  {tlsca.RoleAgent, tlsca.RoleServer},
			"ferry.v1.MasterTarget": {tlsca.RoleServer},
		}, nil)...)
	}
	s.grpc = grpc.NewServer(opts...)
	ferryv1.RegisterReplicationServer(s.grpc, s.recv)
	ferryv1.RegisterMasterTargetServer(s.grpc, &api{s: s})
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.grpc.Serve(s.lis) }()
	return nil
}
