package processserver

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/cespare/xxhash/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/tlsca"
	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// recovery implements the operator API.
type recovery struct {
	ferryv1.UnimplementedRecoveryServer
	s *Server
}

// toStatus answers an error of the Server over gRPC.
func toStatus(err error) error { return wire.Status(err, statusCodes) }

// statusCodes answers each sentinel with one gRPC code.
var statusCodes = []wire.Code{
	// Before the lookups: a request naming a definition that does not
	// exist wraps both.
	{Err: ErrInvalidRequest, Code: codes.InvalidArgument},
	{Err: journal.ErrNoVM, Code: codes.NotFound},
	{Err: journal.ErrNoPoint, Code: codes.NotFound},
	{Err: journal.ErrNoDisk, Code: codes.NotFound},
	{Err: ErrNoJob, Code: codes.NotFound},
	{Err: ErrNoExport, Code: codes.NotFound},
	{Err: ErrNotFound, Code: codes.NotFound},
	{Err: journal.ErrInconsistent, Code: codes.FailedPrecondition},
	{Err: ErrState, Code: codes.FailedPrecondition},
	{Err: ErrNoMasterTarget, Code: codes.FailedPrecondition},
	{Err: ErrNoNBD, Code: codes.FailedPrecondition},
	{Err: journal.ErrChecksum, Code: codes.DataLoss},
	{Err: context.Canceled, Code: codes.Canceled},
}

// ResolvePoint turns an operator's point name into a recovery point of vm:
// latest (processes everything received first), latest-processed,
// latest-app or an ID.
func (s *Server) ResolvePoint(ctx context.Context, vm ferry.VMID, name string) (ferry.Point, error) {
	p, _, err := s.resolvePoint(ctx, vm, name)
	return p, err
}

func (r *recovery) ListVMs(ctx context.Context, _ *ferryv1.ListVMsRequest) (*ferryv1.ListVMsResponse, error) {
	vms, err := r.s.j.VMs(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	out := &ferryv1.ListVMsResponse{}
	for _, vm := range vms {
		out.Vms = append(out.Vms, vmProto(vm))
	}
	return out, nil
}

func (r *recovery) ListPoints(ctx context.Context, req *ferryv1.ListPointsRequest) (*ferryv1.ListPointsResponse, error) {
	pts, err := r.s.j.Points(ctx, ferry.VMID(req.GetVm()))
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
	name := ferry.VMID(req.GetVm())
	vm, err := r.s.j.VM(ctx, name)
	if err != nil {
		return toStatus(err)
	}
	disk, err := vm.DiskIndex(ferry.DiskID(req.GetDisk()))
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
	name := ferry.VMID(req.GetVm())
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

// jobReply returns a job that ran (succeeded or failed) as the answer; an
// error before the job started is the call's error.
func jobReply(j *Job, err error) (*ferryv1.Job, error) {
	if j == nil {
		return nil, toStatus(err)
	}
	return JobProto(j), nil
}

func (r *recovery) Failover(ctx context.Context, req *ferryv1.FailoverRequest) (*ferryv1.Job, error) {
	typ := map[ferryv1.FailoverType]string{ferryv1.FailoverType_FAILOVER_TYPE_TEST: FailoverTest,
		ferryv1.FailoverType_FAILOVER_TYPE_PLANNED: FailoverPlanned, ferryv1.FailoverType_FAILOVER_TYPE_UNPLANNED: FailoverUnplanned}[req.GetType()]
	return jobReply(r.s.Failover(ctx, FailoverRequest{VM: req.GetVm(), Type: typ, Point: req.GetPoint(), Network: req.GetNetwork(), Shutdown: req.GetShutdown()}))
}

func (r *recovery) ChangePoint(ctx context.Context, req *ferryv1.ChangePointRequest) (*ferryv1.Job, error) {
	return jobReply(r.s.ChangePoint(ctx, req.GetVm(), req.GetPoint()))
}

func (r *recovery) Commit(ctx context.Context, req *ferryv1.VMRequest) (*ferryv1.Job, error) {
	return jobReply(r.s.Commit(ctx, req.GetVm()))
}

func (r *recovery) CleanupTest(ctx context.Context, req *ferryv1.VMRequest) (*ferryv1.Job, error) {
	return jobReply(r.s.CleanupTest(ctx, req.GetVm()))
}

func (r *recovery) ListJobs(ctx context.Context, req *ferryv1.ListJobsRequest) (*ferryv1.ListJobsResponse, error) {
	jobs, err := r.s.Jobs(ctx, req.GetVm())
	if err != nil {
		return nil, toStatus(err)
	}
	out := &ferryv1.ListJobsResponse{}
	for i := range jobs {
		out.Jobs = append(out.Jobs, JobProto(&jobs[i]))
	}
	return out, nil
}

func (r *recovery) GetJob(ctx context.Context, req *ferryv1.GetJobRequest) (*ferryv1.Job, error) {
	j, err := r.s.Job(ctx, req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	return JobProto(&j), nil
}

func (r *recovery) Status(ctx context.Context, req *ferryv1.StatusRequest) (*ferryv1.StatusResponse, error) {
	sts, err := r.s.Status(ctx, req.GetVm())
	if err != nil {
		return nil, toStatus(err)
	}
	out := &ferryv1.StatusResponse{}
	for _, st := range sts {
		vs := &ferryv1.VMStatus{Name: st.Name, State: string(st.State), Allowed: st.Allowed, Points: uint32(st.VM.Points),
			UnprocessedBytes: st.Unprocessed, TestFailover: st.TestFailover, Epoch: st.Epoch, RpoAlert: st.RPOAlert,
			AgentConflict: st.AgentConflict, DiskConflict: st.DiskConflict, Agent: st.Agent, Reverse: st.Reverse,
			Instance: st.Instance, PointId: uint64(st.PointID)}
		vs.Health, vs.HealthReason = string(st.Health), st.Reason
		vs.AgentConnected, vs.AgentVersion, vs.AgentHost = st.Link.Connected, st.Link.Version, st.Link.Host
		if st.Link.Connected {
			vs.HeartbeatAgeSeconds = proto.Float64(st.Silence.Seconds())
		}
		vs.RpoThresholdSeconds = st.Threshold.Seconds()
		if st.Copies {
			vs.Progress, vs.ProgressRate = proto.Float64(st.Copy.Progress), st.Copy.Rate
			if st.Copy.Left > 0 {
				vs.ProgressEtaSeconds = proto.Float64(st.Copy.Left.Seconds())
			}
		}
		if t := st.LastTest; t != nil {
			vs.LastTestFailoverJob, vs.LastTestFailoverUnixNano = t.Job, t.At.UnixNano()
		}
		if !st.VM.LatestPoint.IsZero() {
			vs.RpoSeconds = r.s.clock.Now().Sub(st.VM.LatestPoint).Seconds()
		}
		out.Vms = append(out.Vms, vs)
	}
	return out, nil
}

func (r *recovery) Reprotect(ctx context.Context, req *ferryv1.ReprotectRequest) (*ferryv1.Job, error) {
	return jobReply(r.s.Reprotect(ctx, req.GetVm(), ferry.Location(req.GetLocation()), ferry.SyncMode(req.GetSync())))
}

func (r *recovery) Failback(ctx context.Context, req *ferryv1.FailbackRequest) (*ferryv1.Job, error) {
	return jobReply(r.s.Failback(ctx, req.GetVm(), ferry.SyncMode(req.GetSync()), req.GetPoint()))
}

func (r *recovery) ExportNBD(ctx context.Context, req *ferryv1.ExportNBDRequest) (*ferryv1.ExportNBDResponse, error) {
	e, err := r.s.ExportNBD(ctx, req.GetVm(), req.GetPoint(), req.GetDisk(), req.GetWritable())
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.ExportNBDResponse{Uri: e.URI, Name: e.Name, PointId: uint64(e.Point.ID)}, nil
}

func (r *recovery) ListExports(ctx context.Context, req *ferryv1.ListExportsRequest) (*ferryv1.ListExportsResponse, error) {
	resp := &ferryv1.ListExportsResponse{ScratchUsed: r.s.scratch.Used(), ScratchQuota: r.s.cfg.ScratchQuota}
	for _, e := range r.s.Exports() {
		resp.Exports = append(resp.Exports, &ferryv1.NBDExportInfo{Name: e.Name, Uri: e.URI, Vm: e.VM, Disk: e.Disk, PointId: uint64(e.Point.ID),
			Writable: e.Writable, Test: e.Test, CreatedUnixNano: e.Created.UnixNano()})
	}
	return resp, nil
}

func (r *recovery) UnexportNBD(ctx context.Context, req *ferryv1.UnexportNBDRequest) (*ferryv1.UnexportNBDResponse, error) {
	if err := r.s.UnexportNBD(ctx, req.GetName()); err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.UnexportNBDResponse{}, nil
}

func (r *recovery) ListEvents(ctx context.Context, req *ferryv1.ListEventsRequest) (*ferryv1.ListEventsResponse, error) {
	evs, err := r.s.Events(ctx, req.GetVm())
	if err != nil {
		return nil, toStatus(err)
	}
	out := &ferryv1.ListEventsResponse{}
	for _, e := range evs {
		out.Events = append(out.Events, &ferryv1.Event{TimeUnixNano: e.Time.UnixNano(), Vm: e.VM, Kind: e.Kind, Detail: e.Detail})
	}
	return out, nil
}

// JobProto converts a job for the wire.
func JobProto(j *Job) *ferryv1.Job {
	out := &ferryv1.Job{Id: j.ID, Type: j.Type, Vm: j.VM, StartUnixNano: j.Start.UnixNano(), Outcome: string(j.Outcome), Error: j.Error, Console: j.Console,
		Waiting: j.Waiting, Children: j.Children, RequestedBy: j.By}
	if !j.End.IsZero() {
		out.EndUnixNano = j.End.UnixNano()
	}
	out.Steps = wire.StepsProto(j.Steps)
	if j.Point != nil {
		out.Point = wire.PointProto(*j.Point)
	}
	for _, f := range j.Findings {
		out.Findings = append(out.Findings, &ferryv1.Finding{Check: f.Check, Ok: f.OK, Detail: f.Detail, Unknown: f.Unknown})
	}
	return out
}

// vmProto converts a VM's state.
func vmProto(vm journal.VM) *ferryv1.VM {
	return &ferryv1.VM{
		Name:                string(vm.Name),
		Disks:               wire.DisksProto(vm.Disks),
		Epoch:               uint64(vm.Epoch),
		DurableSeq:          uint64(vm.LastSeq),
		Consistent:          vm.Consistent,
		PointCount:          uint32(vm.Points),
		LatestPointUnixNano: unixNanoOrZero(vm.LatestPoint),
		StoredBytes:         vm.StoredBytes,
		LogicalBytes:        vm.LogicalBytes,
	}
}

func unixNanoOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func (r *recovery) ListAudit(ctx context.Context, req *ferryv1.ListAuditRequest) (*ferryv1.ListAuditResponse, error) {
	es, err := r.s.Audit(int(req.GetLimit()))
	if err != nil {
		return nil, toStatus(err)
	}
	out := &ferryv1.ListAuditResponse{}
	for _, e := range es {
		out.Entries = append(out.Entries, &ferryv1.AuditEntry{TimeUnixNano: e.Time.UnixNano(), Who: e.Who, Addr: e.Addr, Action: e.Action, Target: e.Target, Outcome: e.Outcome})
	}
	return out, nil
}

func (r *recovery) ReleaseAgent(ctx context.Context, req *ferryv1.VMRequest) (*ferryv1.ReleaseAgentResponse, error) {
	inst, err := r.s.ReleaseAgent(ctx, req.GetVm())
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.ReleaseAgentResponse{Released: inst}, nil
}

// GroupProto converts a group for the wire.
func GroupProto(g Group) *ferryv1.ReplicationGroup {
	return &ferryv1.ReplicationGroup{Name: g.Name, Vms: g.VMs, CrashIntervalSeconds: int64(g.CrashInterval / time.Second),
		AppIntervalSeconds: int64(g.AppInterval / time.Second), HoldTimeoutMillis: g.HoldTimeout.Milliseconds()}
}

func (r *recovery) ListGroups(ctx context.Context, _ *ferryv1.ListGroupsRequest) (*ferryv1.ListGroupsResponse, error) {
	groups, err := r.s.Groups()
	if err != nil {
		return nil, toStatus(err)
	}
	out := &ferryv1.ListGroupsResponse{}
	for _, g := range groups {
		out.Groups = append(out.Groups, GroupProto(g))
	}
	return out, nil
}

func (r *recovery) PutGroup(ctx context.Context, req *ferryv1.ReplicationGroup) (*ferryv1.ReplicationGroup, error) {
	g := Group{Name: req.GetName(), VMs: req.GetVms(), CrashInterval: time.Duration(req.GetCrashIntervalSeconds()) * time.Second,
		AppInterval: time.Duration(req.GetAppIntervalSeconds()) * time.Second, HoldTimeout: time.Duration(req.GetHoldTimeoutMillis()) * time.Millisecond}
	if err := r.s.PutGroup(ctx, g); err != nil {
		return nil, toStatus(err)
	}
	return GroupProto(g), nil
}

func (r *recovery) DeleteGroup(ctx context.Context, req *ferryv1.DeleteGroupRequest) (*ferryv1.DeleteGroupResponse, error) {
	if err := r.s.DeleteGroup(ctx, req.GetName()); err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.DeleteGroupResponse{}, nil
}

func (r *recovery) GroupPoint(ctx context.Context, req *ferryv1.GroupPointRequest) (*ferryv1.GroupPointResponse, error) {
	res, err := r.s.GroupPoint(ctx, req.GetGroup(), req.GetApp())
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.GroupPointResponse{Tag: res.Tag, MaxHoldNanos: int64(res.MaxHold), Vms: res.VMs}, nil
}

func (r *recovery) ListPlans(ctx context.Context, _ *ferryv1.ListPlansRequest) (*ferryv1.ListPlansResponse, error) {
	plans, err := r.s.Plans()
	if err != nil {
		return nil, toStatus(err)
	}
	out := &ferryv1.ListPlansResponse{}
	for _, p := range plans {
		out.Plans = append(out.Plans, wire.PlanProto(p))
	}
	return out, nil
}

func (r *recovery) PutPlan(ctx context.Context, req *ferryv1.RecoveryPlan) (*ferryv1.RecoveryPlan, error) {
	p := wire.Plan(req)
	if err := r.s.PutPlan(ctx, p); err != nil {
		return nil, toStatus(err)
	}
	return wire.PlanProto(p), nil
}

func (r *recovery) DeletePlan(ctx context.Context, req *ferryv1.DeletePlanRequest) (*ferryv1.DeletePlanResponse, error) {
	if err := r.s.DeletePlan(ctx, req.GetName()); err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.DeletePlanResponse{}, nil
}

func (r *recovery) RunPlan(ctx context.Context, req *ferryv1.RunPlanRequest) (*ferryv1.Job, error) {
	j, err := r.s.RunPlan(ctx, PlanRequest{Plan: req.GetPlan(), Operation: req.GetOperation(), Point: req.GetPoint(),
		Network: req.GetNetwork(), Shutdown: req.GetShutdown(), Location: ferry.Location(req.GetLocation()), Sync: ferry.SyncMode(req.GetSync())})
	if err != nil {
		return nil, toStatus(err)
	}
	return JobProto(j), nil
}

func (r *recovery) ResumePlan(ctx context.Context, req *ferryv1.ResumePlanRequest) (*ferryv1.Job, error) {
	j, err := r.s.ResumePlan(ctx, req.GetPlan())
	if err != nil {
		return nil, toStatus(err)
	}
	return JobProto(j), nil
}

func (r *recovery) ListPolicies(ctx context.Context, _ *ferryv1.ListPoliciesRequest) (*ferryv1.ListPoliciesResponse, error) {
	pols, err := r.s.Policies()
	if err != nil {
		return nil, toStatus(err)
	}
	vms, err := r.s.j.VMs(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	members := map[string][]string{}
	for _, vm := range vms {
		if name, err := r.s.policyName(string(vm.Name)); err == nil {
			members[name] = append(members[name], string(vm.Name))
		}
	}
	out := &ferryv1.ListPoliciesResponse{}
	for _, p := range pols {
		out.Policies = append(out.Policies, wire.PolicyProto(p, members[p.Name]))
	}
	return out, nil
}

func (r *recovery) PutPolicy(ctx context.Context, req *ferryv1.Policy) (*ferryv1.Policy, error) {
	p := wire.Policy(req)
	if err := r.s.PutPolicy(ctx, p); err != nil {
		return nil, toStatus(err)
	}
	return wire.PolicyProto(p, nil), nil
}

func (r *recovery) AttachPolicy(ctx context.Context, req *ferryv1.AttachPolicyRequest) (*ferryv1.AttachPolicyResponse, error) {
	if err := r.s.AttachPolicy(ctx, req.GetVm(), req.GetPolicy()); err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.AttachPolicyResponse{}, nil
}

func (r *recovery) Scrub(ctx context.Context, req *ferryv1.ScrubRequest) (*ferryv1.ScrubResponse, error) {
	res, err := r.s.Scrub(ctx, req.GetVm())
	if err != nil {
		return nil, toStatus(err)
	}
	out := &ferryv1.ScrubResponse{RecordsChecked: uint64(res.Records), WritesChecked: uint64(res.Writes), BytesChecked: uint64(res.Bytes),
		PointsChecked: uint64(res.Points), ResyncRequested: res.ResyncRequested}
	if res.ResyncErr != nil {
		out.ResyncError = res.ResyncErr.Error()
	}
	for _, c := range res.Corrupt {
		pc := &ferryv1.Corruption{Seq: uint64(c.Seq), Disk: int32(c.Disk), Offset: uint64(c.Offset), Length: uint32(c.Length), Error: c.Err.Error()}
		for _, p := range c.Points {
			pc.Points = append(pc.Points, uint64(p))
		}
		out.Corrupt = append(out.Corrupt, pc)
	}
	for _, p := range res.BadPoints {
		out.BadPoints = append(out.BadPoints, uint64(p))
	}
	return out, nil
}

func machineFromProto(m *ferryv1.MachineInfo) Machine {
	return Machine{
		OS: m.GetOs(), AgentVersion: m.GetMobilityAgentVersion(), Physical: m.GetPhysical(), Hypervisor: m.GetHypervisor(),
		ProtectedAsPhysical: m.GetProtectedAsPhysical(), DHCP: m.Dhcp, BootDrivers: m.GetBootDrivers(),
		RDPEnabled: m.GetRdpEnabled(), RDPFirewallProfiles: m.GetRdpFirewallProfiles(), SANPolicy: m.GetSanPolicy(),
		PendingUpdates: m.GetPendingUpdates(), SSHEnabledAtBoot: m.GetSshEnabledAtBoot(), SSHFirewallAllowed: m.GetSshFirewallAllowed(),
		Hardware: wire.Hardware(m.GetHardware()),
	}
}

// onHello keeps the description of the machine an agent protects and
// tells the agent the replication policy it follows.
func (s *Server) onHello(ctx context.Context, h *ferryv1.Hello, ack *ferryv1.HelloAck) error {
	if err := s.shipOnHello(ctx, ferry.VMID(h.GetVm())); err != nil {
		return err
	}
	p, err := s.helloed(helloOf(h))
	if err != nil {
		return err
	}
	ack.Policy = wire.PolicyProto(p, nil)
	return nil
}

// admitAgentRPC is admitAgent for ingest's hook.
func (s *Server) admitAgentRPC(ctx context.Context, h *ferryv1.Hello) error {
	if err := s.admitOwner(ctx, ferry.VMID(h.GetVm())); err != nil {
		return err
	}
	return s.admitAgent(ctx, helloOf(h))
}

// helloOf converts an agent's hello.
func helloOf(h *ferryv1.Hello) agentHello {
	a := agentHello{VM: h.GetVm(), Instance: h.GetAgentInstance(), Epoch: ferry.Epoch(h.GetEpoch()), Disks: wire.Disks(h.GetDisks())}
	if h.GetMachine() != nil {
		m := machineFromProto(h.GetMachine())
		a.Machine = &m
	}
	return a
}

// serveGRPC listens and serves the agents' and operators' APIs.
func (s *Server) serveGRPC() error {
	var err error
	s.lis, err = net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.cfg.Listen, err)
	}
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(s.cfg.MaxMessageBytes),
		grpc.MaxSendMsgSize(s.cfg.MaxMessageBytes),
		grpc.InitialWindowSize(4 << 20),
		grpc.InitialConnWindowSize(8 << 20),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.MaxConcurrentStreams(s.cfg.MaxStreams),
	}
	// First in the chain: calls the policy refuses are audited too.
	opts = append(opts, s.auditOptions()...)
	if s.cfg.TLS != nil {
		opts = append(opts, tlsca.ServerOptions(s.cfg.TLS, tlsca.Policy{
			"ferry.v1.Enrollment":  nil,
			"ferry.v1.Replication": {tlsca.RoleAgent},
			"ferry.v1.Recovery":    {tlsca.RoleOperator, tlsca.RoleAdmin},
		}, s.handshakeFailed)...)
	}
	// A call about a VM another process server of the cluster owns is
	// sent there (once the caller is known to be allowed to make it).
	opts = append(opts, grpc.ChainUnaryInterceptor(s.ownerUnary), grpc.ChainStreamInterceptor(s.ownerStream))
	s.grpc = grpc.NewServer(opts...)
	ferryv1.RegisterReplicationServer(s.grpc, &replication{s: s})
	ferryv1.RegisterRecoveryServer(s.grpc, &recovery{s: s})
	if s.cfg.CA != nil {
		ferryv1.RegisterEnrollmentServer(s.grpc, &tlsca.EnrollServer{CA: s.cfg.CA, Log: s.log, Audit: func(ctx context.Context, action, vm string) {
			who, addr := callerOf(ctx)
			s.audit(AuditEntry{Who: who, Addr: addr, Action: action, Target: vm, Outcome: "ok"})
		}})
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.grpc.Serve(s.lis); err != nil {
			s.log.Error("grpc serve", "err", err)
		}
	}()
	return nil
}

// dialMasterTarget connects to the master target, when there is one.
func (s *Server) dialMasterTarget() error {
	if s.cfg.MasterTarget == "" {
		return nil
	}
	creds := insecure.NewCredentials()
	if s.cfg.MasterTargetTLS != nil {
		creds = credentials.NewTLS(s.cfg.MasterTargetTLS)
	}
	var err error
	s.mtConn, err = grpc.NewClient(s.cfg.MasterTarget, grpc.WithTransportCredentials(creds), wire.Checked())
	if err != nil {
		return fmt.Errorf("master target %s: %w", s.cfg.MasterTarget, err)
	}
	s.mt = &masterTarget{c: ferryv1.NewMasterTargetClient(s.mtConn)}
	return nil
}

func (r *recovery) ConsoleLogin(ctx context.Context, _ *ferryv1.ConsoleLoginRequest) (*ferryv1.ConsoleLoginResponse, error) {
	url, exp, id, err := r.s.consoleLink(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &ferryv1.ConsoleLoginResponse{Url: url, ExpiresUnixNano: exp.UnixNano(), Identity: id.String()}, nil
}
