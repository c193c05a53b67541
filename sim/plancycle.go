package sim

import (
	"context"
	"strings"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/processserver"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// PlanCycleDrill runs the whole cycle through one recovery plan: web-1 and
// db-1 form a replication group and the plan's first group, app-1 (a
// VMware VM) is the second, after a manual step. The primary site is lost;
// the plan fails over unplanned to the latest multi-VM processed point and
// commits; the recovered VMs run; the plan reprotects them to the master
// target, fails them back (the first group synchronizing before failover,
// to the replication group's common point, the second during failover
// only), commits, and reprotects them forward; a test failover of the plan
// closes the cycle. Every disk is compared with the ground truth at every
// stage.
func PlanCycleDrill(ctx context.Context, cfg Config, minutes int) (*Report, error) {
	if cfg.VMs == nil {
		cfg.VMs = DefaultVMs()
	}
	if cfg.Networks == nil {
		cfg.Networks = DefaultNetworks()
	}
	cfg.MasterTarget = true
	cfg.Groups = []processserver.Group{{Name: "shop", VMs: []string{"web-1", "db-1"}}}
	if cfg.GroupInterval == 0 {
		cfg.GroupInterval = 2 * time.Minute
	}
	rep := &Report{Seed: cfg.Seed, Scenario: "plan-cycle"}
	d, err := New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	plan := &ferryv1.RecoveryPlan{Name: "site", Groups: []*ferryv1.PlanGroup{
		{Vms: []string{"web-1", "db-1"}, Pre: []*ferryv1.PlanAction{{Name: "stop the application tier", Command: "stop-app-tier"}}},
		{Vms: []string{"app-1"}, Pre: []*ferryv1.PlanAction{{Name: "confirm the licence server is up", Manual: true}},
			Post: []*ferryv1.PlanAction{{Name: "switch DNS", Command: "switch-dns"}}, FailbackSync: string(ferry.SyncDuring)},
	}}
	if _, err := d.Recovery.PutPlan(ctx, plan); err != nil {
		return rep, err
	}
	rep.note("plan site: group 1 is replication group shop (web-1, db-1, a multi-VM point every %s), group 2 is app-1 (VMware) after a manual step; group 2 fails back synchronizing during failover only", cfg.GroupInterval)
	if err := d.Run(ctx, time.Duration(minutes)*time.Minute); err != nil {
		return rep, err
	}
	if err := d.ProcessNow(ctx); err != nil {
		return rep, err
	}
	if err := d.Run(ctx, time.Minute); err != nil {
		return rep, err
	}

	// Failover.
	const unreplicated = 256 << 10
	if err := d.Outage(ctx, unreplicated); err != nil {
		return rep, err
	}
	rep.note("stage 1: primary site lost at %s virtual; each VM wrote %s its agent never sent", d.Clock.Now().Sub(Start).Round(time.Second), cli.Bytes(unreplicated))
	if !d.PlanRun(ctx, rep, &ferryv1.RunPlanRequest{Plan: "site", Operation: "unplanned-failover", Point: ferry.PointLatestMultiVMProcessed}) {
		return rep, nil
	}
	if !d.PlanRun(ctx, rep, &ferryv1.RunPlanRequest{Plan: "site", Operation: "commit"}) {
		return rep, nil
	}
	for _, v := range d.VMs {
		if err := d.RunRecovered(ctx, v); err != nil {
			return rep, err
		}
	}
	if err := d.Run(ctx, time.Minute); err != nil {
		return rep, err
	}

	// Reprotect to the master target.
	if !d.planReprotect(ctx, rep, ferry.LocationOriginal) {
		return rep, nil
	}
	if err := d.Run(ctx, 2*time.Minute); err != nil {
		return rep, err
	}
	if err := d.ProcessNow(ctx); err != nil {
		return rep, err
	}

	// Failback: the recovered VMs write until they are shut down.
	for _, v := range d.VMs {
		if v.recoveredAgent != nil {
			v.sentBeforeFailback = v.recoveredAgent.Stats().SentBytes
		}
		if err := v.work(ctx, v.Config.Workload.Churn/2); err != nil {
			return rep, err
		}
	}
	fb, ok := d.planJob(ctx, rep, &ferryv1.RunPlanRequest{Plan: "site", Operation: "failback"})
	if !ok {
		return rep, nil
	}
	tags := map[string]string{}
	for _, c := range fb {
		v := d.VM(c.GetVm())
		e := d.record(rep, v, "failback (plan site)", c, nil)
		if e.Failed != "" {
			continue
		}
		d.checkFailback(ctx, rep, v, e, c)
		tags[v.Config.Name] = e.Point.GetTag()
	}
	if a, b := tags["web-1"], tags["db-1"]; !strings.HasPrefix(a, "group/shop/failback-") || a != b {
		rep.fail("plan site failback: web-1 and db-1 took points %q and %q, not their group's common point", a, b)
	} else {
		rep.note("stage 3: web-1 and db-1 failed back to their common point %s (cut after both had shut down); app-1 to its own final point %q", a, tags["app-1"])
	}
	old := map[string]<-chan struct{}{}
	for _, v := range d.VMs {
		if v.recoveredAgent != nil {
			old[v.Config.Name] = v.recoveredAgent.Done()
		}
	}
	if !d.PlanRun(ctx, rep, &ferryv1.RunPlanRequest{Plan: "site", Operation: "commit"}) {
		return rep, nil
	}
	for _, v := range d.VMs {
		select {
		case <-old[v.Config.Name]:
		case <-time.After(30 * time.Second):
			rep.fail("%s: the recovered VM's agent was not refused after the failback was committed", v.Config.Name)
		}
	}

	// Reprotect forward, verified by a test failover of the plan.
	if !d.planReprotect(ctx, rep, "") {
		return rep, nil
	}
	if err := d.Run(ctx, 2*time.Minute); err != nil {
		return rep, err
	}
	if err := d.ProcessNow(ctx); err != nil {
		return rep, err
	}
	d.PlanRun(ctx, rep, &ferryv1.RunPlanRequest{Plan: "site", Operation: "test-failover", Point: ferry.PointLatestProcessed, Network: "drill-isolated"})
	d.PlanRun(ctx, rep, &ferryv1.RunPlanRequest{Plan: "site", Operation: "cleanup-test"})
	rep.note("stage 4: forward replication resumed; every VM's latest processed point verified by a test failover of the plan")
	return rep, nil
}

// planReprotect reprotects every VM through the plan (location: to the
// master target; "" after a committed failback: forward), then starts each
// VM's agent where it runs and checks its resync.
func (d *Drill) planReprotect(ctx context.Context, rep *Report, location ferry.Location) bool {
	base := map[string]reprotectBaseline{}
	plan, err := d.Recovery.ListPlans(ctx, &ferryv1.ListPlansRequest{})
	if err != nil {
		rep.fail("list plans: %v", err)
		return false
	}
	during := map[string]bool{}
	for _, p := range plan.GetPlans() {
		for _, g := range p.GetGroups() {
			for _, vm := range g.GetVms() {
				during[vm] = p.GetName() == "site" && ferry.SyncMode(g.GetFailbackSync()) == ferry.SyncDuring
			}
		}
	}
	for _, v := range d.VMs {
		b := d.reprotectBaseline(ctx, v, location)
		b.during = location != "" && during[v.Config.Name]
		base[v.Config.Name] = b
	}
	jobs, ok := d.planJob(ctx, rep, &ferryv1.RunPlanRequest{Plan: "site", Operation: "reprotect", Location: string(location)})
	if !ok {
		return false
	}
	for _, c := range jobs {
		v := d.VM(c.GetVm())
		b := base[v.Config.Name]
		e := d.record(rep, v, b.action+" (plan site)", c, nil)
		if e.Failed != "" {
			return false
		}
		d.afterReprotect(ctx, rep, v, e, b)
		if e.Failed != "" {
			return false
		}
	}
	return true
}

// planJob runs a plan operation, resuming it at each manual step, records
// the plan's job and returns its VMs' jobs.
func (d *Drill) planJob(ctx context.Context, rep *Report, req *ferryv1.RunPlanRequest) ([]*ferryv1.Job, bool) {
	planVM := &VM{Config: VMConfig{Name: "plan " + req.GetPlan()}}
	job, err := d.Recovery.RunPlan(ctx, req)
	for err == nil {
		job, err = d.waitJob(ctx, job.GetId())
		if err != nil || job.GetWaiting() == "" {
			break
		}
		rep.note("plan %s waits: %s; the drill's operator resumes it", req.GetPlan(), job.GetWaiting())
		_, err = d.Recovery.ResumePlan(ctx, &ferryv1.ResumePlanRequest{Plan: req.GetPlan()})
	}
	action := req.GetOperation()
	if p := req.GetPoint(); p != "" {
		action += " (" + p + ")"
	}
	if l := req.GetLocation(); l != "" {
		action += " (" + l + " location)"
	}
	if e := d.record(rep, planVM, action, job, err); e.Failed != "" {
		return nil, false
	}
	var out []*ferryv1.Job
	for _, id := range job.GetChildren() {
		c, err := d.Recovery.GetJob(ctx, &ferryv1.GetJobRequest{Id: id})
		if err != nil || d.VM(c.GetVm()) == nil {
			rep.fail("plan job %d: child job %d: %v", job.GetId(), id, err)
			return nil, false
		}
		out = append(out, c)
	}
	if len(out) != len(d.VMs) {
		rep.fail("plan job %d ran %d VM jobs for %d VMs", job.GetId(), len(out), len(d.VMs))
		return nil, false
	}
	return out, true
}
