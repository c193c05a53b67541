package sim

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/processserver"
	"github.com/ferrydr/ferry/processserver/client"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// PlanDrill fails the default VMs over as one recovery plan: web-1 and
// db-1 form a replication group with multi-VM points every 2 minutes; the
// plan brings db-1 up first (after an action that stops the application
// tier), then web-1 and app-1 after an operator confirms a manual step,
// then switches DNS. It runs a test failover of the plan to the latest
// multi-VM processed point, verifies and cleans it up, replicates on,
// loses the primary site, fails the plan over unplanned, changes it to the latest point and
// commits. Every disk is compared with the ground truth of its point, and
// the grouped VMs must share one multi-VM point.
func PlanDrill(ctx context.Context, cfg Config, minutes int) (*Report, error) {
	if cfg.VMs == nil {
		cfg.VMs = DefaultVMs()
	}
	if cfg.Networks == nil {
		cfg.Networks = DefaultNetworks()
	}
	cfg.Groups = []processserver.Group{{Name: "shop", VMs: []string{"web-1", "db-1"}}}
	if cfg.GroupInterval == 0 {
		cfg.GroupInterval = 2 * time.Minute
	}
	rep := &Report{Seed: cfg.Seed, Scenario: "plan"}
	d, err := New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	plan := &ferryv1.RecoveryPlan{Name: "site", Groups: []*ferryv1.PlanGroup{
		{Vms: []string{"db-1"}, Pre: []*ferryv1.PlanAction{{Name: "stop the application tier", Command: "stop-app-tier"}}},
		{Vms: []string{"web-1", "app-1"}, Pre: []*ferryv1.PlanAction{{Name: "confirm the licence server is up", Manual: true}},
			Post: []*ferryv1.PlanAction{{Name: "switch DNS to the recovery site", Command: "switch-dns"}}},
	}}
	if _, err := d.Recovery.PutPlan(ctx, plan); err != nil {
		return rep, err
	}
	rep.note("%d VMs replicated; replication group shop (web-1, db-1) cuts a multi-VM point every %s; plan site: db-1, then web-1 and app-1", len(d.VMs), cfg.GroupInterval)
	if err := d.Run(ctx, time.Duration(minutes)*time.Minute); err != nil {
		return rep, err
	}
	if err := d.ProcessNow(ctx); err != nil {
		return rep, err
	}
	if err := d.Run(ctx, time.Minute); err != nil {
		return rep, err
	}
	holds := d.GroupHolds
	var longest time.Duration
	for _, h := range holds {
		longest = max(longest, h)
	}
	rep.note("ran %d virtual minutes: %d multi-VM points", minutes+1, len(holds))
	rep.WallNotes = append(rep.WallNotes, fmt.Sprintf("longest hold of a member's writes for a multi-VM point: %v", longest))

	if _, err := d.Recovery.RunPlan(ctx, &ferryv1.RunPlanRequest{Plan: "site", Operation: "test-failover", Point: "latest-42"}); err != nil {
		rep.note("a custom point for the plan is refused: %v", err)
	} else {
		rep.fail("the plan accepted a custom point")
	}
	d.PlanRun(ctx, rep, &ferryv1.RunPlanRequest{Plan: "site", Operation: "test-failover", Point: ferry.PointLatestMultiVMProcessed, Network: "drill-isolated"})
	d.PlanRun(ctx, rep, &ferryv1.RunPlanRequest{Plan: "site", Operation: "cleanup-test"})
	// Five more minutes of churn, processed, then one more unprocessed.
	if err := d.Run(ctx, 5*time.Minute); err != nil {
		return rep, err
	}
	if err := d.ProcessNow(ctx); err != nil {
		return rep, err
	}
	if err := d.Run(ctx, time.Minute); err != nil {
		return rep, err
	}
	if err := d.Outage(ctx, 0); err != nil {
		return rep, err
	}
	rep.note("primary site lost at %s virtual", d.Clock.Now().Sub(Start).Round(time.Second))
	d.PlanRun(ctx, rep, &ferryv1.RunPlanRequest{Plan: "site", Operation: "unplanned-failover", Point: ferry.PointLatestMultiVMProcessed})
	d.PlanRun(ctx, rep, &ferryv1.RunPlanRequest{Plan: "site", Operation: "change-point", Point: ferry.PointLatest})
	d.PlanRun(ctx, rep, &ferryv1.RunPlanRequest{Plan: "site", Operation: "commit"})
	return rep, nil
}

// PlanRun runs a plan operation through the recovery API, resuming it at
// each manual step, records the plan job and every VM's job, and verifies
// each VM the plan failed over. It reports whether everything succeeded.
func (d *Drill) PlanRun(ctx context.Context, rep *Report, req *ferryv1.RunPlanRequest) bool {
	failures := len(rep.Failures)
	children, ok := d.planJob(ctx, rep, req)
	if !ok {
		return false
	}
	tags := map[string]string{}
	for _, c := range children {
		v := d.VM(c.GetVm())
		e := d.record(rep, v, fmt.Sprintf("%s (plan %s)", c.GetType(), req.GetPlan()), c, nil)
		if e.Failed != "" || e.Point == nil {
			continue
		}
		tags[v.Config.Name] = e.Point.GetTag()
		if st := d.status(ctx, v.Config.Name); st != nil && st.GetInstance() != "" {
			d.verify(ctx, rep, v, e, st.GetInstance())
		}
	}
	if req.GetPoint() == ferry.PointLatestMultiVMProcessed {
		if a, b := tags["web-1"], tags["db-1"]; !strings.HasPrefix(a, "group/") || a != b {
			rep.fail("plan %s: the grouped VMs took points %q and %q, not one multi-VM point", req.GetPlan(), a, b)
		} else {
			rep.note("plan %s: web-1 and db-1 both took multi-VM point %s; app-1 its own latest processed point", req.GetPlan(), a)
		}
	}
	return len(rep.Failures) == failures
}

// waitJob follows a job until it ends or waits for an operator.
func (d *Drill) waitJob(ctx context.Context, id uint64) (*ferryv1.Job, error) {
	return client.FollowJob(ctx, d.Recovery, id, 5*time.Millisecond, nil)
}
