package processserver

import (
	"context"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/job"
	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// masterTarget is the master target as the process server's jobs use it:
// Ferry's types in and out, the gRPC client kept here.
type masterTarget struct {
	c ferryv1.MasterTargetClient
}

// ReverseStatus is what the master target says of a VM's reverse
// replication.
type ReverseStatus struct {
	Registered     bool
	Location       ferry.Location
	SyncDuring     bool
	Epoch          ferry.Epoch
	Consistent     bool
	ResyncProgress float64
	ReceivedBytes  int64
	Points         int
}

// mtFailback is the master target's account of one VM's failback.
type mtFailback struct {
	Steps []job.Step
	// Point is where the primary's disks now are; nil when the failback
	// did not get that far.
	Point                                   *ferry.Point
	Downtime, Applied                       time.Duration
	DowntimeBytes, AppliedBytes, TotalBytes int64
}

func (m *masterTarget) prepareReprotect(ctx context.Context, vm string, disks []ferry.Disk, epoch ferry.Epoch, loc ferry.Location, sync ferry.SyncMode) ([]string, error) {
	resp, err := m.c.PrepareReprotect(ctx, &ferryv1.PrepareReprotectRequest{Vm: vm, Disks: wire.DisksProto(disks), Epoch: uint64(epoch),
		Location: string(loc), SyncDuring: sync == ferry.SyncDuring})
	return resp.GetTargets(), err
}

func (m *masterTarget) reprotectStatus(ctx context.Context, vm string) (ReverseStatus, error) {
	rs, err := m.c.ReprotectStatus(ctx, &ferryv1.VMRequest{Vm: vm})
	if err != nil {
		return ReverseStatus{}, err
	}
	return ReverseStatus{Registered: rs.GetRegistered(), Location: ferry.Location(rs.GetLocation()), SyncDuring: rs.GetSyncDuring(),
		Epoch: ferry.Epoch(rs.GetEpoch()), Consistent: rs.GetConsistent(), ResyncProgress: rs.GetResyncProgress(),
		ReceivedBytes: int64(rs.GetReceivedBytes()), Points: int(rs.GetPoints())}, nil
}

// failback fails vms back: one VM, or (group set) a replication group's
// members together. The answers are in the order of vms.
func (m *masterTarget) failback(ctx context.Context, group string, vms []string, sync ferry.SyncMode, point string) ([]mtFailback, error) {
	var resps []*ferryv1.MTFailbackResponse
	if group != "" {
		out, err := m.c.FailbackGroup(ctx, &ferryv1.MTFailbackGroupRequest{Group: group, Vms: vms, Sync: string(sync), Point: point})
		if err != nil {
			return nil, err
		}
		resps = out.GetResults()
	} else {
		out, err := m.c.Failback(ctx, &ferryv1.MTFailbackRequest{Vm: vms[0], Sync: string(sync), Point: point})
		if err != nil {
			return nil, err
		}
		resps = []*ferryv1.MTFailbackResponse{out}
	}
	res := make([]mtFailback, len(resps))
	for i, r := range resps {
		res[i] = mtFailback{Steps: wire.Steps(r.GetSteps()), Downtime: time.Duration(r.GetDowntimeNanos()), Applied: time.Duration(r.GetAppliedNanos()),
			DowntimeBytes: int64(r.GetDowntimeBytes()), AppliedBytes: int64(r.GetAppliedBytes()), TotalBytes: int64(r.GetTotalBytes())}
		if p := r.GetPoint(); p != nil && i < len(vms) {
			pt := wire.Point(ferry.VMID(vms[i]), p)
			res[i].Point = &pt
		}
	}
	return res, nil
}

func (m *masterTarget) retire(ctx context.Context, vm string) error {
	_, err := m.c.Retire(ctx, &ferryv1.VMRequest{Vm: vm})
	return err
}

// groupPoint has the master target cut a multi-VM point of a group whose
// members replicate to it.
func (m *masterTarget) groupPoint(ctx context.Context, group string, vms []string, app bool, hold time.Duration) (GroupPointResult, error) {
	resp, err := m.c.GroupPoint(ctx, &ferryv1.MTGroupPointRequest{Group: group, Vms: vms, App: app, HoldTimeoutMillis: hold.Milliseconds()})
	if err != nil {
		return GroupPointResult{}, err
	}
	return GroupPointResult{Tag: resp.GetTag(), MaxHold: time.Duration(resp.GetMaxHoldNanos()), VMs: resp.GetVms()}, nil
}

// events returns the master target's events of vm (all when empty), their
// kinds marked as the master target's.
func (m *masterTarget) events(ctx context.Context, vm string) ([]Event, error) {
	res, err := m.c.ListEvents(ctx, &ferryv1.ListEventsRequest{Vm: vm})
	if err != nil {
		return nil, err
	}
	var out []Event
	for _, e := range res.GetEvents() {
		out = append(out, Event{Time: time.Unix(0, e.GetTimeUnixNano()).UTC(), VM: e.GetVm(), Kind: "master-target/" + e.GetKind(), Detail: e.GetDetail()})
	}
	return out, nil
}
