package processserver

import (
	"context"
	"fmt"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/pkg/journal"
)

// VMStatus is what an operator sees of one VM: its protection state and
// the actions it allows, its replication health and why, its RPO against
// the policy's threshold, its agent, a copy under way and its last test
// failover. ferryctl status and the console show it.
type VMStatus struct {
	Name    string
	State   State
	Allowed []string
	// Health and the VM's journal and agent it was judged on.
	VMHealth
	VM    journal.VM
	Epoch uint64
	// Unprocessed is the received data not yet cut into recovery points.
	Unprocessed uint64
	// RPOAlert: the RPO is above the threshold.
	RPOAlert bool
	// TestFailover: a test failover is up; Instance and PointID are the
	// machine and point of it or of the failover.
	TestFailover bool
	Instance     string
	PointID      ferry.Seq
	// Agent is the instance the VM replicates from; AgentConflict the last
	// one refused; DiskConflict a protected disk that changed size.
	Agent, AgentConflict, DiskConflict string
	// LastTest is the last test failover that succeeded.
	LastTest *LastTest
	// Reverse is reverse replication, as the master target reports it.
	Reverse string
}

// Status returns every VM's status, or only vm's; a VM that does not exist
// is journal.ErrNoVM.
func (s *Server) Status(ctx context.Context, vm string) ([]VMStatus, error) {
	vms, err := s.j.VMs(ctx)
	if err != nil {
		return nil, err
	}
	var out []VMStatus
	for _, v := range vms {
		if vm != "" && string(v.Name) != vm {
			continue
		}
		st, _, err := s.vmState(ctx, string(v.Name))
		if err != nil {
			return nil, err
		}
		vs := VMStatus{Name: string(v.Name), State: st.State, Allowed: st.Allowed(), VM: v, Epoch: uint64(v.Epoch),
			Unprocessed: v.LogicalBytes - v.ProcessedBytes, RPOAlert: s.alertingFor(string(v.Name)),
			TestFailover: st.Test != nil, AgentConflict: st.AgentConflict, DiskConflict: st.DiskConflict, LastTest: st.LastTest}
		vs.VMHealth = s.vmHealth(v, st)
		if b := st.Agent; b != nil {
			vs.Agent = fmt.Sprintf("instance %s (%s), epoch %d, since %s", b.Instance, b.Peer, b.Epoch, b.Since.UTC().Format(time.RFC3339))
		}
		if st.Failover != nil {
			vs.Instance, vs.PointID = st.Failover.Instance, st.Failover.Point
		} else if st.Test != nil {
			vs.Instance, vs.PointID = st.Test.Instance, st.Test.Point
		}
		if st.State == StateReprotected && s.mt != nil {
			if rs, err := s.mt.reprotectStatus(ctx, string(v.Name)); err == nil && rs.Registered {
				vs.Reverse = fmt.Sprintf("%s location, epoch %d, %s received, %d failback points, consistent %v",
					rs.Location, rs.Epoch, cli.Bytes(rs.ReceivedBytes), rs.Points, rs.Consistent)
				if p := rs.ResyncProgress; p > 0 && p < 1 {
					vs.Reverse += fmt.Sprintf(", resync %.0f%%", p*100)
				}
			}
		}
		out = append(out, vs)
	}
	if vm != "" && len(out) == 0 {
		return nil, fmt.Errorf("vm %s: %w", vm, journal.ErrNoVM)
	}
	return out, nil
}
