package mastertarget

import (
	"context"
	"fmt"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/group"
)

// GroupPoint is a multi-VM point cut: its tag, the members, and the
// longest a member's writes were held.
type GroupPoint struct {
	Tag     string
	VMs     []string
	MaxHold time.Duration
}

// GroupPoint cuts a multi-VM point of a replication group replicating
// back here: the process server asks for it at the group's frequencies,
// and a group's app-consistent failback goes to the newest one common to
// every member.
// hold bounds how long a member's writes may be held (default 2 s, at most
// a minute).
func (s *Server) GroupPoint(ctx context.Context, name string, vms []string, app bool, hold time.Duration) (GroupPoint, error) {
	if err := ferry.ValidName(name); err != nil {
		return GroupPoint{}, fmt.Errorf("%w: group name: %w", ErrInvalidRequest, err)
	}
	if len(vms) < 2 || len(vms) > 16 {
		return GroupPoint{}, fmt.Errorf("%w: group %s: 2 to 16 VMs, not %d", ErrInvalidRequest, name, len(vms))
	}
	seen := map[string]bool{}
	for _, vm := range vms {
		t, err := s.store.target(vm)
		if err != nil {
			return GroupPoint{}, err
		}
		switch {
		case seen[vm]:
			return GroupPoint{}, fmt.Errorf("%w: group %s: vm %s is listed twice", ErrInvalidRequest, name, vm)
		case t == nil || t.Retired:
			return GroupPoint{}, fmt.Errorf("%w: group %s: vm %s is not replicating to this master target", ErrState, name, vm)
		case t.SyncDuring:
			return GroupPoint{}, fmt.Errorf("%w: group %s: vm %s synchronizes during failover only: it sends nothing before its failback, so it has no multi-VM point", ErrState, name, vm)
		case s.failingBack(vm):
			return GroupPoint{}, fmt.Errorf("%w: group %s: vm %s is failing back", ErrState, name, vm)
		}
		seen[vm] = true
	}
	if hold <= 0 || hold > time.Minute {
		hold = 2 * time.Second
	}
	n, err := s.store.nextGroupPoint(name)
	if err != nil {
		return GroupPoint{}, err
	}
	tag := group.Tag(name, n)
	holds, err := group.Cut(ctx, s.recv, tag, vms, app, hold)
	out := GroupPoint{Tag: tag, VMs: vms}
	for _, d := range holds {
		out.MaxHold = max(out.MaxHold, d)
	}
	if err != nil {
		return GroupPoint{}, fmt.Errorf("%w: group %s: multi-VM point %s not cut: %w", ErrNotCut, name, tag, err)
	}
	s.log.Info("multi-VM point cut", "group", name, "tag", tag, "app", app, "max_hold", out.MaxHold)
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
		return nil, fmt.Errorf("%w: %w", ErrState, err)
	}
	out := map[string]ferry.Seq{}
	for vm, p := range pts {
		out[vm] = p.ID
	}
	return out, nil
}
