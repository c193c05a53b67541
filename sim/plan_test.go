package sim_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/internal/journaltest"
	"github.com/ferrydr/ferry/processserver"
	"github.com/ferrydr/ferry/processserver/client"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
	"github.com/ferrydr/ferry/sim"
)

// waitPlan follows a plan job until it ends or waits for an operator.
func waitPlan(t *testing.T, d *sim.Drill, id uint64) *ferryv1.Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	j, err := client.FollowJob(ctx, d.Recovery, id, 5*time.Millisecond, nil)
	if err != nil {
		t.Fatalf("plan job %d: %v", id, err)
	}
	return j
}

func actionNames(runs []sim.ActionRun) []string {
	var out []string
	for _, r := range runs {
		out = append(out, fmt.Sprintf("%d:%s:%s", r.Group, r.Operation, r.Name))
	}
	return out
}

// TestRecoveryPlan runs a plan of three groups over five VMs, two of them
// in a replication group, through test failover, cleanup, unplanned
// failover, change point and commit: groups start in order with their pre
// and post actions around them, a manual step waits for the operator,
// grouped VMs take the common multi-VM point, the others their own latest,
// a custom point is refused, and every failed-over disk equals its ground
// truth.
func TestRecoveryPlan(t *testing.T) {
	ctx := context.Background()
	var vms []sim.VMConfig
	for _, n := range []string{"db-1", "db-2", "app-1", "web-1", "web-2"} {
		c := linux(n, 32<<10, sim.Uniform)
		c.App = true
		vms = append(vms, c)
	}
	d, err := sim.New(ctx, sim.Config{Seed: 31, VMs: vms, Networks: sim.DefaultNetworks(), Dir: t.TempDir(), Logger: ferrytest.Logger(t),
		CrashInterval: time.Minute, AppInterval: 3 * time.Minute, ProcessInterval: 4 * time.Minute,
		Groups:        []processserver.Group{{Name: "erp", VMs: []string{"db-1", "db-2"}}},
		GroupInterval: 3 * time.Minute, GroupAppInterval: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	defer journaltest.MustCheck(t, d.PS.Journal())
	if err := d.Run(ctx, 11*time.Minute); err != nil {
		t.Fatal(err)
	}
	plan := &ferryv1.RecoveryPlan{Name: "erp-plan", Groups: []*ferryv1.PlanGroup{
		{Vms: []string{"db-1", "db-2"}, Pre: []*ferryv1.PlanAction{{Name: "drain load balancer", Command: "lb drain"}},
			Post: []*ferryv1.PlanAction{{Name: "check database", Command: "db check"}}},
		{Vms: []string{"app-1"}, Pre: []*ferryv1.PlanAction{{Name: "confirm licence server", Manual: true}}},
		{Vms: []string{"web-1", "web-2"}, Post: []*ferryv1.PlanAction{{Name: "switch dns", Command: "dns switch"}}},
	}}
	if _, err := d.Recovery.PutPlan(ctx, plan); err != nil {
		t.Fatal(err)
	}

	// A custom point is refused for a plan; so is a planned failover to
	// anything but the final point.
	_, err = d.Recovery.RunPlan(ctx, &ferryv1.RunPlanRequest{Plan: "erp-plan", Operation: "test-failover", Point: "42"})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "custom point") {
		t.Fatalf("custom point for a plan: %v", err)
	}
	_, err = d.Recovery.RunPlan(ctx, &ferryv1.RunPlanRequest{Plan: "erp-plan", Operation: "planned-failover", Point: "latest-processed"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("planned failover of a plan to latest-processed: %v", err)
	}

	// A failing pre action stops the plan before any VM fails over.
	d.Actions.Callback = func(r sim.ActionRun) error {
		if r.Name == "drain load balancer" {
			return errors.New("load balancer unreachable")
		}
		return nil
	}
	job, err := d.Recovery.RunPlan(ctx, &ferryv1.RunPlanRequest{Plan: "erp-plan", Operation: "test-failover", Point: "latest-multivm-processed", Network: "drill-isolated"})
	if err != nil {
		t.Fatal(err)
	}
	job = waitPlan(t, d, job.GetId())
	if ferry.Outcome(job.GetOutcome()) != ferry.OutcomeFailed || !strings.Contains(job.GetError(), "load balancer unreachable") || len(job.GetChildren()) != 0 {
		t.Fatalf("plan with a failing pre action: %s %q, children %v", job.GetOutcome(), job.GetError(), job.GetChildren())
	}
	d.Actions.Callback = nil
	ranBefore := len(d.Actions.Runs())

	// Test failover: group 1, then the manual step, then groups 2 and 3.
	job, err = d.Recovery.RunPlan(ctx, &ferryv1.RunPlanRequest{Plan: "erp-plan", Operation: "test-failover", Point: "latest-multivm-processed", Network: "drill-isolated"})
	if err != nil {
		t.Fatal(err)
	}
	job = waitPlan(t, d, job.GetId())
	if job.GetWaiting() == "" || !strings.Contains(job.GetWaiting(), "ferryctl plan resume erp-plan") {
		t.Fatalf("plan did not wait at its manual step: %s %q", job.GetOutcome(), job.GetWaiting())
	}
	if got := actionNames(d.Actions.Runs()[ranBefore:]); !slices.Equal(got, []string{"1:test-failover:drain load balancer", "1:test-failover:check database"}) {
		t.Fatalf("actions before the manual step: %v", got)
	}
	for vm, want := range map[string]bool{"db-1": true, "db-2": true, "app-1": false, "web-1": false} {
		if st := status1(t, d, vm); st.GetTestFailover() != want {
			t.Fatalf("%s test failover %v while the plan waits at group 2, want %v", vm, st.GetTestFailover(), want)
		}
	}
	if _, err := d.Recovery.ResumePlan(ctx, &ferryv1.ResumePlanRequest{Plan: "erp-plan"}); err != nil {
		t.Fatal(err)
	}
	job = waitPlan(t, d, job.GetId())
	if ferry.Outcome(job.GetOutcome()) != ferry.OutcomeSucceeded {
		t.Fatalf("plan test failover: %s %s", job.GetOutcome(), job.GetError())
	}
	if got := actionNames(d.Actions.Runs()[ranBefore:]); !slices.Equal(got, []string{"1:test-failover:drain load balancer", "1:test-failover:check database", "3:test-failover:switch dns"}) {
		t.Fatalf("actions: %v", got)
	}
	if _, err := d.Recovery.ResumePlan(ctx, &ferryv1.ResumePlanRequest{Plan: "erp-plan"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("resume of a plan that does not wait: %v", err)
	}
	children := checkPlanJob(t, d, job, []string{"db-1", "db-2", "app-1", "web-1", "web-2"})
	// Grouped VMs: the newest multi-VM point both have, processed. The
	// others: their own latest processed point.
	common := newestCommonTag(t, d, "erp", []string{"db-1", "db-2"}, false)
	for _, vm := range []string{"db-1", "db-2"} {
		pts, _ := d.Recovery.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: vm})
		if last := pts.GetPoints()[len(pts.GetPoints())-1]; last.GetTag() == common {
			t.Fatalf("%s: the common multi-VM point is also its latest point: the test cannot tell them apart", vm)
		}
	}
	for vm, p := range children {
		switch vm {
		case "db-1", "db-2":
			if p.GetTag() != common {
				t.Fatalf("%s failed over to %q, want the common multi-VM point %s", vm, p.GetTag(), common)
			}
		default:
			pts, _ := d.Recovery.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: vm})
			if last := pts.GetPoints()[len(pts.GetPoints())-1]; p.GetId() != last.GetId() {
				t.Fatalf("%s failed over to point %d, want its latest processed %d", vm, p.GetId(), last.GetId())
			}
		}
	}
	verifyPlanVMs(t, d, children)

	job = runPlan(t, d, &ferryv1.RunPlanRequest{Plan: "erp-plan", Operation: "cleanup-test"})
	if ferry.Outcome(job.GetOutcome()) != ferry.OutcomeSucceeded {
		t.Fatalf("plan cleanup: %s %s", job.GetOutcome(), job.GetError())
	}

	// The primary site is lost: unplanned failover of the plan, then change
	// every VM to the latest multi-VM app-consistent point, then commit.
	if err := d.Run(ctx, 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := d.ProcessNow(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Outage(ctx, 0); err != nil {
		t.Fatal(err)
	}
	job = runPlan(t, d, &ferryv1.RunPlanRequest{Plan: "erp-plan", Operation: "unplanned-failover", Point: "latest-multivm-processed"})
	if ferry.Outcome(job.GetOutcome()) != ferry.OutcomeSucceeded {
		t.Fatalf("plan unplanned failover: %s %s", job.GetOutcome(), job.GetError())
	}
	verifyPlanVMs(t, d, checkPlanJob(t, d, job, []string{"db-1", "db-2", "app-1", "web-1", "web-2"}))

	commonApp := newestCommonTag(t, d, "erp", []string{"db-1", "db-2"}, true)
	job = runPlan(t, d, &ferryv1.RunPlanRequest{Plan: "erp-plan", Operation: "change-point", Point: "latest-multivm-app"})
	if ferry.Outcome(job.GetOutcome()) != ferry.OutcomeSucceeded {
		t.Fatalf("plan change point: %s %s", job.GetOutcome(), job.GetError())
	}
	children = checkPlanJob(t, d, job, []string{"db-1", "db-2", "app-1", "web-1", "web-2"})
	for vm, p := range children {
		if p.GetConsistency() != ferryv1.Consistency_CONSISTENCY_APP {
			t.Fatalf("%s changed to point %d (%v), want app-consistent", vm, p.GetId(), p.GetConsistency())
		}
		if (vm == "db-1" || vm == "db-2") && p.GetTag() != commonApp {
			t.Fatalf("%s changed to %q, want the common multi-VM app-consistent point %s", vm, p.GetTag(), commonApp)
		}
		truth, err := d.TruthFor(d.VM(vm), p)
		if err != nil {
			t.Fatal(err)
		}
		img := exportDisk(t, d, vm, fmt.Sprint(p.GetId()), "disk0", truth.Disks[0].Size())
		if err := sim.CheckApp(ctx, img); err != nil {
			t.Fatalf("%s: app-consistent point %d (%s) fails the application check: %v", vm, p.GetId(), p.GetTag(), err)
		}
	}
	verifyPlanVMs(t, d, children)
	job = runPlan(t, d, &ferryv1.RunPlanRequest{Plan: "erp-plan", Operation: "commit"})
	if ferry.Outcome(job.GetOutcome()) != ferry.OutcomeSucceeded {
		t.Fatalf("plan commit: %s %s", job.GetOutcome(), job.GetError())
	}
	for _, vm := range []string{"db-1", "db-2", "app-1", "web-1", "web-2"} {
		if st := status1(t, d, vm); st.GetState() != string(processserver.StateCommitted) {
			t.Fatalf("%s is %s after the plan's commit", vm, st.GetState())
		}
	}
	t.Logf("plan test failover, cleanup, unplanned failover, change point and commit over %d VMs: every disk verified; multi-VM holds %v", len(vms), d.GroupHolds)
}

// runPlan runs a plan operation, resuming it at every manual step.
func runPlan(t *testing.T, d *sim.Drill, req *ferryv1.RunPlanRequest) *ferryv1.Job {
	t.Helper()
	job, err := d.Recovery.RunPlan(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	for {
		job = waitPlan(t, d, job.GetId())
		if job.GetWaiting() == "" {
			return job
		}
		if _, err := d.Recovery.ResumePlan(context.Background(), &ferryv1.ResumePlanRequest{Plan: req.GetPlan()}); err != nil {
			t.Fatal(err)
		}
	}
}

// checkPlanJob checks that the plan job ran one job per VM, group after
// group, and returns each VM's point.
func checkPlanJob(t *testing.T, d *sim.Drill, job *ferryv1.Job, order []string) map[string]*ferryv1.RecoveryPoint {
	t.Helper()
	out := map[string]*ferryv1.RecoveryPoint{}
	groupOf := map[string]int{"db-1": 1, "db-2": 1, "app-1": 2, "web-1": 3, "web-2": 3}
	var lastGroup int
	var lastEnd int64
	for _, id := range job.GetChildren() {
		c, err := d.Recovery.GetJob(context.Background(), &ferryv1.GetJobRequest{Id: id})
		if err != nil {
			t.Fatal(err)
		}
		g := groupOf[c.GetVm()]
		if g < lastGroup {
			t.Fatalf("job %d of %s (group %d) ran after group %d", id, c.GetVm(), g, lastGroup)
		}
		if g > lastGroup && c.GetStartUnixNano() < lastEnd {
			t.Fatalf("group %d started at %d before group %d ended at %d", g, c.GetStartUnixNano(), lastGroup, lastEnd)
		}
		if g > lastGroup {
			lastGroup = g
		}
		lastEnd = max(lastEnd, c.GetEndUnixNano())
		if ferry.Outcome(c.GetOutcome()) != ferry.OutcomeSucceeded {
			t.Fatalf("job %d of %s: %s %s", id, c.GetVm(), c.GetOutcome(), c.GetError())
		}
		out[c.GetVm()] = c.GetPoint()
	}
	if len(out) != len(order) {
		t.Fatalf("plan job %d ran jobs for %d VMs, want %d", job.GetId(), len(out), len(order))
	}
	return out
}

// verifyPlanVMs compares each VM's failed-over disks with the ground truth
// of its point.
func verifyPlanVMs(t *testing.T, d *sim.Drill, points map[string]*ferryv1.RecoveryPoint) {
	t.Helper()
	for vm, p := range points {
		st := status1(t, d, vm)
		truth, err := d.TruthFor(d.VM(vm), p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.VerifyInstance(context.Background(), st.GetInstance(), truth); err != nil {
			t.Fatalf("%s at point %d (%s): %v", vm, p.GetId(), p.GetTag(), err)
		}
	}
}

func status1(t *testing.T, d *sim.Drill, vm string) *ferryv1.VMStatus {
	t.Helper()
	st, err := d.Recovery.Status(context.Background(), &ferryv1.StatusRequest{Vm: vm})
	if err != nil {
		t.Fatal(err)
	}
	return st.GetVms()[0]
}

// newestCommonTag is the newest multi-VM tag of group that every VM has
// as a processed point (app-consistent when app).
func newestCommonTag(t *testing.T, d *sim.Drill, group string, vms []string, app bool) string {
	t.Helper()
	count := map[string]int{}
	var order []string
	for _, vm := range vms {
		pts, err := d.Recovery.ListPoints(context.Background(), &ferryv1.ListPointsRequest{Vm: vm})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pts.GetPoints() {
			if !strings.HasPrefix(p.GetTag(), "group/"+group+"/") || (app && p.GetConsistency() != ferryv1.Consistency_CONSISTENCY_APP) {
				continue
			}
			if count[p.GetTag()] == 0 {
				order = append(order, p.GetTag())
			}
			count[p.GetTag()]++
		}
	}
	best := ""
	for _, tag := range order {
		if count[tag] == len(vms) {
			best = tag
		}
	}
	if best == "" {
		t.Fatalf("no common multi-VM point of %s", group)
	}
	return best
}

// TestPlanDrill runs the plan scenario of ferry-drill: every VM of every
// plan operation is recorded and every failed-over disk verified.
func TestPlanDrill(t *testing.T) {
	rep, err := sim.PlanDrill(context.Background(), sim.Config{Seed: 3, Dir: t.TempDir(), Logger: ferrytest.Logger(t)}, 5)
	if err != nil {
		t.Fatal(err)
	}
	noFailures(t, rep)
	verified := 0
	for _, e := range rep.Entries {
		if strings.HasPrefix(e.Verified, "ok") {
			verified++
		}
	}
	// 5 plan jobs; 3 VMs x (test failover, unplanned failover, change
	// point) verified.
	if len(rep.Entries) != 5+5*3 || verified != 9 {
		t.Fatalf("%d entries, %d verified; want 20 and 9", len(rep.Entries), verified)
	}
}
