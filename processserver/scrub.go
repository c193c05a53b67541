package processserver

import (
	"context"
	"fmt"
	"slices"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/wire"
)

// EventCorruption: a scrub found corrupt records in a VM's journal.
const EventCorruption = "corruption"

// ScrubResult is a scrub's report and what was done about it.
type ScrubResult struct {
	journal.ScrubReport
	// ResyncRequested: the VM's agent was asked to send the corrupt blocks
	// again; ResyncErr says why it was not, when it was not.
	ResyncRequested bool
	ResyncErr       error
}

// Scrub re-reads and checks the whole journal of vm. Every corruption is
// an event; while the VM is protected and its agent connected, the agent
// is asked to send the corrupt blocks again, so that new points read good
// data (the points that read the corrupt data stay unusable: reading them
// fails with the record's location).
func (s *Server) Scrub(ctx context.Context, vm string) (ScrubResult, error) {
	rep, err := s.j.Scrub(ctx, ferry.VMID(vm))
	res := ScrubResult{ScrubReport: rep}
	if err != nil || (len(rep.Corrupt) == 0 && len(rep.BadPoints) == 0) {
		return res, err
	}
	for _, c := range rep.Corrupt {
		s.log.Error("corrupt record", "vm", vm, "seq", c.Seq, "disk", c.Disk, "offset", c.Offset, "points", len(c.Points), "err", c.Err)
		s.event(Event{Time: s.clock.Now(), VM: vm, Kind: EventCorruption,
			Detail: fmt.Sprintf("%v; %d points read it and cannot be used", c.Err, len(c.Points))})
	}
	var ranges []ferry.Range
	for _, c := range rep.Corrupt {
		if c.Disk >= 0 {
			ranges = append(ranges, ferry.Range{Disk: c.Disk, Offset: c.Offset, Length: int64(c.Length)})
		}
	}
	st, _, err := s.vmState(ctx, vm)
	switch {
	case err != nil:
		res.ResyncErr = err
	case st.State != StateProtected && st.State != StateEnabling:
		res.ResyncErr = fmt.Errorf("vm %s is %s: no agent replicates it to this server", vm, st.State)
	case len(ranges) == 0:
		res.ResyncErr = fmt.Errorf("no corrupt write has a known location")
	case !slices.Contains(s.recv.Sessions(), ferry.VMID(vm)):
		res.ResyncErr = fmt.Errorf("vm %s: its agent is not connected", vm)
	default:
		r, err := s.recv.Command(ctx, ferry.VMID(vm), wire.ResyncCommand(ranges))
		if err == nil && !r.GetOk() {
			err = fmt.Errorf("%s", r.GetError())
		}
		res.ResyncRequested, res.ResyncErr = err == nil, err
	}
	return res, nil
}
