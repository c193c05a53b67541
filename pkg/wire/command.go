package wire

import (
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/retention"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// The commands a receiver sends an agent on its stream.

// ShutdownCommand asks the agent to shut its machine down and end at a
// final marker tagged tag; fullCopy sends the whole disks after it (a
// failback that synchronizes during failover only).
func ShutdownCommand(fullCopy bool, tag string) *ferryv1.Command {
	return &ferryv1.Command{Action: &ferryv1.Command_Shutdown{Shutdown: &ferryv1.Shutdown{FullCopy: fullCopy, Tag: tag}}}
}

// CheckpointCommand asks the agent to cut a point (tagged tag) at once.
func CheckpointCommand(tag string) *ferryv1.Command {
	return &ferryv1.Command{Action: &ferryv1.Command_Checkpoint{Checkpoint: &ferryv1.Checkpoint{Tag: tag}}}
}

// PolicyCommand gives the agent the VM's replication policy.
func PolicyCommand(p retention.Policy) *ferryv1.Command {
	return &ferryv1.Command{Action: &ferryv1.Command_Policy{Policy: PolicyProto(p, nil)}}
}

// ResyncCommand asks the agent to send these ranges of its disks again.
func ResyncCommand(ranges []ferry.Range) *ferryv1.Command {
	out := make([]*ferryv1.Range, len(ranges))
	for i, r := range ranges {
		out[i] = &ferryv1.Range{Disk: uint32(r.Disk), Offset: uint64(r.Offset), Length: uint64(r.Length)}
	}
	return &ferryv1.Command{Action: &ferryv1.Command_Resync{Resync: &ferryv1.Resync{Ranges: out}}}
}

// HoldCommand asks the agent to hold its VM's writes for a multi-VM point
// tagged tag (at most hold), with an app-consistent freeze when app.
func HoldCommand(tag string, app bool, hold time.Duration) *ferryv1.Command {
	return &ferryv1.Command{Action: &ferryv1.Command_Hold{Hold: &ferryv1.GroupHold{Tag: tag, App: app, TimeoutMillis: hold.Milliseconds()}}}
}

// CutCommand asks a holding agent to cut the multi-VM point tagged tag
// and let writes go on; abort lets them go on without a point.
func CutCommand(tag string, abort bool) *ferryv1.Command {
	return &ferryv1.Command{Action: &ferryv1.Command_Cut{Cut: &ferryv1.GroupCut{Tag: tag, Abort: abort}}}
}
