package wire

import (
	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/plan"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// PlanProto converts a plan for the wire.
func PlanProto(p plan.Plan) *ferryv1.RecoveryPlan {
	out := &ferryv1.RecoveryPlan{Name: p.Name, UploadedBy: p.UploadedBy}
	if !p.Uploaded.IsZero() {
		out.UploadedUnixNano = p.Uploaded.UnixNano()
	}
	conv := func(as []plan.Action) []*ferryv1.PlanAction {
		var o []*ferryv1.PlanAction
		for _, a := range as {
			o = append(o, &ferryv1.PlanAction{Name: a.Name, Command: a.Command, Manual: a.Manual})
		}
		return o
	}
	for _, g := range p.Groups {
		out.Groups = append(out.Groups, &ferryv1.PlanGroup{Vms: g.VMs, Pre: conv(g.Pre), Post: conv(g.Post), FailbackSync: string(g.FailbackSync)})
	}
	return out
}

// Plan converts a plan from the wire.
func Plan(in *ferryv1.RecoveryPlan) plan.Plan {
	p := plan.Plan{Name: in.GetName()}
	conv := func(as []*ferryv1.PlanAction) []plan.Action {
		var o []plan.Action
		for _, a := range as {
			o = append(o, plan.Action{Name: a.GetName(), Command: a.GetCommand(), Manual: a.GetManual()})
		}
		return o
	}
	for _, g := range in.GetGroups() {
		p.Groups = append(p.Groups, plan.Group{VMs: g.GetVms(), Pre: conv(g.GetPre()), Post: conv(g.GetPost()), FailbackSync: ferry.SyncMode(g.GetFailbackSync())})
	}
	return p
}
