package mastertarget

import (
	"context"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/group"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

var bucketGroupSeq = []byte("group-seq")

// GroupPoint cuts a multi-VM point of a replication group replicating
// back here: the process server asks for it at the group's frequencies,
// and a group's app-consistent failback goes to the newest one common to
// every member.
func (s *Server) GroupPoint(ctx context.Context, req *ferryv1.MTGroupPointRequest) (*ferryv1.GroupPointResponse, error) {
	name := req.GetGroup()
	if err := ferry.ValidName(name); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "group name: %v", err)
	}
	vms := req.GetVms()
	if len(vms) < 2 || len(vms) > 16 {
		return nil, status.Errorf(codes.InvalidArgument, "group %s: 2 to 16 VMs, not %d", name, len(vms))
	}
	seen := map[string]bool{}
	for _, vm := range vms {
		t, err := s.target(vm)
		if err != nil {
			return nil, err
		}
		switch {
		case seen[vm]:
			return nil, status.Errorf(codes.InvalidArgument, "group %s: vm %s is listed twice", name, vm)
		case t == nil || t.Retired:
			return nil, status.Errorf(codes.FailedPrecondition, "group %s: vm %s is not replicating to this master target", name, vm)
		case t.SyncDuring:
			return nil, status.Errorf(codes.FailedPrecondition, "group %s: vm %s synchronizes during failover only: it sends nothing before its failback, so it has no multi-VM point", name, vm)
		case s.failingBack(vm):
			return nil, status.Errorf(codes.FailedPrecondition, "group %s: vm %s is failing back", name, vm)
		}
		seen[vm] = true
	}
	hold := time.Duration(req.GetHoldTimeoutMillis()) * time.Millisecond
	if hold <= 0 || hold > time.Minute {
		hold = 2 * time.Second
	}
	var n uint64
	if err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketGroupSeq)
		if err != nil {
			return err
		}
		g, err := b.CreateBucketIfNotExists([]byte(name))
		if err != nil {
			return err
		}
		n, err = g.NextSequence()
		return err
	}); err != nil {
		return nil, err
	}
	tag := group.Tag(name, n)
	holds, err := group.Cut(ctx, s.recv, tag, vms, req.GetApp(), hold)
	out := &ferryv1.GroupPointResponse{Tag: tag, Vms: vms}
	for _, d := range holds {
		out.MaxHoldNanos = max(out.MaxHoldNanos, int64(d))
	}
	if err != nil {
		return nil, status.Errorf(codes.Aborted, "group %s: multi-VM point %s not cut: %v", name, tag, err)
	}
	s.log.Info("multi-VM point cut", "group", name, "tag", tag, "app", req.GetApp(), "max_hold", time.Duration(out.MaxHoldNanos))
	return out, nil
}

// commonApp returns each member's point of the group's newest
// app-consistent multi-VM point, processed first.
func (s *Server) commonApp(ctx context.Context, name string, vms []string) (map[string]ferry.Seq, error) {
	if err := s.j.ProcessAll(ctx, nil); err != nil {
		return nil, err
	}
	pts, err := group.Common(ctx, s.j, name, vms, true)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "%v", err)
	}
	out := map[string]ferry.Seq{}
	for vm, p := range pts {
		out[vm] = p.ID
	}
	return out, nil
}
