package sim_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/internal/journaltest"
	"github.com/ferrydr/ferry/mastertarget"
	"github.com/ferrydr/ferry/pkg/retention"
	"github.com/ferrydr/ferry/processserver"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
	"github.com/ferrydr/ferry/sim"
	"github.com/ferrydr/ferry/sim/fault"
)

// TestPlanCycleDrill runs the whole cycle through a recovery plan twice
// with one seed: every disk equals its ground truth at every stage, the
// replication group fails back to one common point, and the two reports
// are the same.
func TestPlanCycleDrill(t *testing.T) {
	var reports []string
	runs := 2
	if raceEnabled {
		runs = 1 // the race detector's run checks the cycle; make test compares two
	}
	for range runs {
		dir := t.TempDir()
		rep, err := sim.PlanCycleDrill(context.Background(), sim.Config{Seed: 5, Dir: dir, Logger: ferrytest.Logger(t)}, 3)
		if err != nil {
			t.Fatal(err)
		}
		noFailures(t, rep)
		rep.Dir = dir
		var b strings.Builder
		rep.Print(&b)
		reports = append(reports, b.String())
		fb := map[string]*sim.Entry{}
		for _, e := range rep.Entries {
			if e.Action == "failback (plan site)" {
				fb[e.VM] = e
			}
		}
		if len(fb) != 3 {
			t.Fatalf("%d failback entries, want 3", len(fb))
		}
		web, db := fb["web-1"].Point.GetTag(), fb["db-1"].Point.GetTag()
		if !strings.HasPrefix(web, "group/shop/failback-") || web != db {
			t.Fatalf("grouped VMs failed back to %q and %q", web, db)
		}
		if fb["app-1"].Point.GetTag() != "shutdown" {
			t.Fatalf("app-1 failed back to %q", fb["app-1"].Point.GetTag())
		}
	}
	if runs == 2 && reports[0] != reports[1] {
		a, b := strings.Split(reports[0], "\n"), strings.Split(reports[1], "\n")
		for i := range min(len(a), len(b)) {
			if a[i] != b[i] {
				t.Fatalf("same seed, different reports at line %d:\n%s\n%s", i+1, a[i], b[i])
			}
		}
		t.Fatalf("same seed, reports of %d and %d lines", len(a), len(b))
	}
}

// reverse fails vm over unplanned, commits, runs it at the recovery site
// and reprotects it to the master target, its agent replicating through a
// fault proxy (the WAN).
func reverse(t *testing.T, d *sim.Drill, vm string) *fault.Proxy {
	t.Helper()
	ctx := context.Background()
	rep := &sim.Report{}
	v := d.VM(vm)
	d.Failover(ctx, rep, v, &ferryv1.FailoverRequest{Vm: vm, Type: ferryv1.FailoverType_FAILOVER_TYPE_UNPLANNED, Point: "latest"})
	d.Commit(ctx, rep, v)
	noFailures(t, rep)
	if err := d.RunRecovered(ctx, v); err != nil {
		t.Fatal(err)
	}
	job, err := d.Recovery.Reprotect(ctx, &ferryv1.ReprotectRequest{Vm: vm, Location: "original"})
	if err != nil || job.GetOutcome() != "succeeded" {
		t.Fatalf("reprotect: %v %s", err, job.GetError())
	}
	st, err := d.Recovery.Status(ctx, &ferryv1.StatusRequest{Vm: vm})
	if err != nil {
		t.Fatal(err)
	}
	px, err := fault.Listen(d.MT.Addr(), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	if err := d.StartAgent(ctx, v, px.Addr(), st.GetVms()[0].GetEpoch(), "reverse"); err != nil {
		t.Fatal(err)
	}
	return px
}

// TestMasterTargetFailbackPolicy replicates a recovered VM back to the
// master target for 72 virtual hours under the failback policy: retention
// keeps its journal bounded (points older than 24 h go, their data folded
// into the primary's disks), the agent is told the policy in its hello,
// and cutting the reverse link for 20 virtual minutes raises an RPO alert
// that clears when the link is back, each with an event the process server
// lists too. The failback after it still equals the ground truth.
func TestMasterTargetFailbackPolicy(t *testing.T) {
	if testing.Short() {
		t.Skip("72 virtual hours")
	}
	ctx := context.Background()
	vm := linux("fb-1", 1<<10, sim.Uniform)
	vm.Disks = []int64{4 * mib}
	d := mtDrill(t, sim.Config{Seed: 3, VMs: []sim.VMConfig{vm}, Tick: 5 * time.Minute, CrashInterval: 5 * time.Minute, ProcessInterval: 30 * time.Minute})
	run(t, d, 10*time.Minute)
	px := reverse(t, d, "fb-1")
	v := d.VM("fb-1")
	if got := v.Agent.Policy(); got.GetName() != retention.FailbackName || got.GetRpoThresholdSeconds() != 15*60 || got.GetRetentionSeconds() != 24*3600 {
		t.Fatalf("the reverse agent follows %v, want the failback policy", got)
	}
	pol := retention.Failback()
	hours := 72
	if raceEnabled {
		hours = 36 // a day and a half: past the retention window, at a tenth of the speed
	}
	var sizes []int64 // the master target's stored bytes, every virtual hour
	for h := 0; h < hours; h++ {
		run(t, d, time.Hour)
		if err := d.ProcessNow(ctx); err != nil {
			t.Fatal(err)
		}
		st, err := d.MT.Journal().VM(ctx, "fb-1")
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, int64(st.StoredBytes))
		pts, err := d.MT.Journal().Points(ctx, "fb-1")
		if err != nil {
			t.Fatal(err)
		}
		if age := d.Clock.Now().Sub(pts[0].Time); age > pol.Retention+time.Hour {
			t.Fatalf("hour %d: the oldest failback point is %v old, past the %v retention", h+1, age, pol.Retention)
		}
	}
	peak := func(from, to int) (m int64) {
		for _, s := range sizes[from:to] {
			m = max(m, s)
		}
		return m
	}
	if hours == 72 {
		first, second, third := peak(0, 24), peak(24, 48), peak(48, 72)
		t.Logf("master target journal peak per day: %d, %d, %d bytes", first, second, third)
		if third > second+second/4 || second > first*2 {
			t.Fatalf("the master target's journal grows under the failback policy: peaks per day %d, %d, %d bytes", first, second, third)
		}
	} else if first, rest := peak(0, 24), peak(24, hours); rest > first+first/4 {
		t.Fatalf("the master target's journal grows under the failback policy: peak %d bytes on the first day, %d after", first, rest)
	}
	if evs, _ := d.MT.Events(""); len(evs) != 0 {
		t.Fatalf("events before the link was cut: %v", evs)
	}

	// Cut the reverse link for 20 virtual minutes.
	px.CutAfter(1)
	px.Reset()
	for range 4 {
		d.Clock.Advance(5 * time.Minute)
		if !v.Agent.Mark(false, "") {
			t.Fatal("the agent refused a marker")
		}
		if err := d.MT.ProcessAll(ctx); err != nil {
			t.Fatal(err)
		}
	}
	evs, err := d.MT.Events("fb-1")
	if err != nil || len(evs) != 1 || evs[0].Kind != mastertarget.EventRPOExceeded {
		t.Fatalf("after 20 minutes without the link: events %v (%v), want one rpo-exceeded", evs, err)
	}
	px.CutAfter(0)
	run(t, d, 10*time.Minute)
	if err := d.ProcessNow(ctx); err != nil {
		t.Fatal(err)
	}
	evs, _ = d.MT.Events("fb-1")
	if len(evs) != 2 || evs[1].Kind != mastertarget.EventRPORecovered {
		t.Fatalf("after the link came back: events %v, want rpo-exceeded then rpo-recovered", evs)
	}
	psEvents, err := d.Recovery.ListEvents(ctx, &ferryv1.ListEventsRequest{Vm: "fb-1"})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range psEvents.GetEvents() {
		kinds = append(kinds, e.GetKind())
	}
	if !strings.Contains(strings.Join(kinds, ","), "master-target/rpo-exceeded,master-target/rpo-recovered") {
		t.Fatalf("ferryctl events shows %v", kinds)
	}
	rep := &sim.Report{}
	d.Failback(ctx, rep, v, "before")
	noFailures(t, rep)
}

// TestFailoverTypesPerMachineKind: planned failover is refused for a
// VMware VM with a clear error and allowed for a Hyper-V one; a Windows VM
// from VMware gets its VMware Tools disabled by failover processing.
func TestFailoverTypesPerMachineKind(t *testing.T) {
	ctx := context.Background()
	hv := linux("hv-1", 32<<10, sim.Uniform)
	hv.Machine.Hypervisor = "hyperv"
	vw := sim.VMConfig{Name: "vw-1", Disks: []int64{8 * mib}, Workload: sim.Workload{Churn: 32 << 10, Pattern: sim.Uniform},
		Machine: &ferryv1.MachineInfo{Os: "windows", MobilityAgentVersion: "9.55", Hypervisor: "vmware", Dhcp: proto.Bool(true),
			BootDrivers: processserver.RequiredBootDrivers, RdpEnabled: true, RdpFirewallProfiles: []string{"public"}, SanPolicy: "OnlineAll"}}
	d := start(t, 11, hv, vw)
	run(t, d, 2*time.Minute)
	_, err := d.Recovery.Failover(ctx, &ferryv1.FailoverRequest{Vm: "vw-1", Type: ferryv1.FailoverType_FAILOVER_TYPE_PLANNED})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "planned failover is offered for Hyper-V-style machines; vw-1 is a VMware VM") {
		t.Fatalf("planned failover of a VMware VM: %v", err)
	}
	st, _ := d.Recovery.Status(ctx, &ferryv1.StatusRequest{Vm: "vw-1"})
	if fmt.Sprint(st.GetVms()[0].GetAllowed()) != "[test-failover unplanned-failover]" {
		t.Fatalf("a VMware VM is offered %v", st.GetVms()[0].GetAllowed())
	}
	rep := &sim.Report{}
	d.Failover(ctx, rep, d.VM("hv-1"), &ferryv1.FailoverRequest{Vm: "hv-1", Type: ferryv1.FailoverType_FAILOVER_TYPE_PLANNED})
	e := d.Failover(ctx, rep, d.VM("vw-1"), &ferryv1.FailoverRequest{Vm: "vw-1", Type: ferryv1.FailoverType_FAILOVER_TYPE_UNPLANNED, Shutdown: true, Point: "latest"})
	noFailures(t, rep)
	var processing string
	for _, s := range e.Job.GetSteps() {
		if s.GetName() == "failover processing" {
			processing = s.GetDetail()
		}
	}
	if !strings.Contains(processing, processserver.DisableVMwareTools) {
		t.Fatalf("failover processing of a Windows VM from VMware: %q", processing)
	}
	st, _ = d.Recovery.Status(ctx, &ferryv1.StatusRequest{Vm: "vw-1"})
	inst, ok := d.Compute.Instance(st.GetVms()[0].GetInstance())
	if !ok || !inst.ToolsDisabled {
		t.Fatalf("the recovered VMware VM's tools were not disabled (%v)", ok)
	}
}

// TestFailbackWhenRecoveredVMWillNotShutDown: a failback whose recovered
// VM does not shut down fails with a clear error, applies nothing and
// loses nothing: once the VM shuts down, the failback equals the ground
// truth.
func TestFailbackWhenRecoveredVMWillNotShutDown(t *testing.T) {
	ctx := context.Background()
	d := mtDrill(t, sim.Config{Seed: 12, VMs: []sim.VMConfig{linux("fb-1", 64<<10, sim.Uniform)}})
	run(t, d, time.Minute)
	reverse(t, d, "fb-1")
	run(t, d, 2*time.Minute)
	if err := d.ProcessNow(ctx); err != nil {
		t.Fatal(err)
	}
	v := d.VM("fb-1")
	v.Config.ShutdownFails = true
	job, err := d.Recovery.Failback(ctx, &ferryv1.FailbackRequest{Vm: "fb-1", Sync: "before"})
	if err != nil || job.GetOutcome() != "failed" || !strings.Contains(job.GetError(), "did not shut down") || !strings.Contains(job.GetError(), "nothing was applied") {
		t.Fatalf("failback of a VM that will not shut down: %v %q", err, job.GetError())
	}
	st, _ := d.Recovery.Status(ctx, &ferryv1.StatusRequest{Vm: "fb-1"})
	if st.GetVms()[0].GetState() != "reprotected" {
		t.Fatalf("after the failed failback the VM is %s", st.GetVms()[0].GetState())
	}
	run(t, d, time.Minute)
	v.Config.ShutdownFails = false
	rep := &sim.Report{}
	d.Failback(ctx, rep, v, "before")
	noFailures(t, rep)
}

// TestAppConsistentFailback fails back to the newest app-consistent point
// the recovered VM's agent cut, which equals its ground truth.
func TestAppConsistentFailback(t *testing.T) {
	ctx := context.Background()
	vm := linux("fb-1", 64<<10, sim.Uniform)
	vm.App = true
	d := mtDrill(t, sim.Config{Seed: 13, VMs: []sim.VMConfig{vm}, AppInterval: time.Minute})
	run(t, d, time.Minute)
	reverse(t, d, "fb-1")
	run(t, d, 3*time.Minute)
	if err := d.ProcessNow(ctx); err != nil {
		t.Fatal(err)
	}
	v := d.VM("fb-1")
	job, err := d.Recovery.Failback(ctx, &ferryv1.FailbackRequest{Vm: "fb-1", Sync: "before", Point: "latest-app"})
	if err != nil || job.GetOutcome() != "succeeded" {
		t.Fatalf("app-consistent failback: %v %s", err, job.GetError())
	}
	p := job.GetPoint()
	if p.GetConsistency() != ferryv1.Consistency_CONSISTENCY_APP {
		t.Fatalf("failed back to a %v point", p.GetConsistency())
	}
	truth, ok := v.Truth(p.GetTag())
	if !ok {
		t.Fatalf("no ground truth for point %d %q", p.GetId(), p.GetTag())
	}
	for i, dev := range v.Active() {
		if n, err := sim.EqualDevices(ctx, dev, truth.Disks[i]); err != nil {
			t.Fatalf("primary disk%d after an app-consistent failback (%d bytes equal): %v", i, n, err)
		}
	}
}

// TestPlanFailbackRefusals: a plan failback is refused before anything
// starts when a replication group is split across plan groups, for a bad
// sync or point, or while its VMs are not reprotected.
func TestPlanFailbackRefusals(t *testing.T) {
	ctx := context.Background()
	d := mtDrill(t, sim.Config{Seed: 14, VMs: []sim.VMConfig{linux("a-1", 16<<10, sim.Uniform), linux("b-1", 16<<10, sim.Uniform)},
		Groups: []processserver.Group{{Name: "pair", VMs: []string{"a-1", "b-1"}}}})
	split := &ferryv1.RecoveryPlan{Name: "split", Groups: []*ferryv1.PlanGroup{{Vms: []string{"a-1"}}, {Vms: []string{"b-1"}}}}
	whole := &ferryv1.RecoveryPlan{Name: "whole", Groups: []*ferryv1.PlanGroup{{Vms: []string{"a-1", "b-1"}}}}
	for _, p := range []*ferryv1.RecoveryPlan{split, whole} {
		if _, err := d.Recovery.PutPlan(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.Recovery.PutPlan(ctx, &ferryv1.RecoveryPlan{Name: "bad", Groups: []*ferryv1.PlanGroup{{Vms: []string{"a-1"}, FailbackSync: "later"}}}); err == nil {
		t.Fatal("a plan group with failback_sync later was stored")
	}
	for _, c := range []struct {
		req  *ferryv1.RunPlanRequest
		want string
	}{
		{&ferryv1.RunPlanRequest{Plan: "split", Operation: "failback"}, "replication group pair fails back together"},
		{&ferryv1.RunPlanRequest{Plan: "whole", Operation: "failback", Sync: "later"}, `sync "later"`},
		{&ferryv1.RunPlanRequest{Plan: "whole", Operation: "failback", Point: "latest-processed"}, "a failback takes latest or latest-app"},
		{&ferryv1.RunPlanRequest{Plan: "whole", Operation: "reprotect", Location: "elsewhere"}, `location "elsewhere"`},
		{&ferryv1.RunPlanRequest{Plan: "whole", Operation: "failback"}, "failback is not allowed"},
	} {
		_, err := d.Recovery.RunPlan(ctx, c.req)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%v: %v, want an error saying %q", c.req, err, c.want)
		}
	}
	if jobs, _ := d.Recovery.ListJobs(ctx, &ferryv1.ListJobsRequest{}); len(jobs.GetJobs()) != 0 {
		t.Fatalf("refused plans left %d jobs", len(jobs.GetJobs()))
	}
}

// TestUnplannedDefaultPoint: an unplanned failover that names no point and
// does not shut the source down uses the latest point: everything
// received is processed first and the point lacks no acknowledged write.
func TestUnplannedDefaultPoint(t *testing.T) {
	ctx := context.Background()
	d := start(t, 15, linux("u-1", 128<<10, sim.Uniform))
	run(t, d, 3*time.Minute) // leaves received data unprocessed
	if err := d.Outage(ctx, 64<<10); err != nil {
		t.Fatal(err)
	}
	rep := &sim.Report{}
	e := d.Failover(ctx, rep, d.VM("u-1"), &ferryv1.FailoverRequest{Vm: "u-1", Type: ferryv1.FailoverType_FAILOVER_TYPE_UNPLANNED})
	noFailures(t, rep)
	var sel string
	for _, s := range e.Job.GetSteps() {
		if s.GetName() == "select recovery point" {
			sel = s.GetDetail()
		}
	}
	if !strings.HasPrefix(sel, "latest: ") || e.LossBytes != 0 || e.UnackedBytes != 64<<10 {
		t.Fatalf("unplanned failover without a point: %q, tag %q, %d acknowledged bytes missing, %d never acknowledged", sel, e.Point.GetTag(), e.LossBytes, e.UnackedBytes)
	}
}

// TestGroupFailbackWhenAMemberWillNotShutDown: when one member of a
// replication group does not shut down, the group's failback fails for
// every member (no member is taken for failed back), and once it shuts
// down the group fails back to its common point, equal to the ground
// truth.
func TestGroupFailbackWhenAMemberWillNotShutDown(t *testing.T) {
	ctx := context.Background()
	d := reversedPair(t, sim.Config{Seed: 16, VMs: []sim.VMConfig{linux("a-1", 32<<10, sim.Uniform), linux("b-1", 32<<10, sim.Uniform)}}, 2*time.Minute)
	d.VM("b-1").Config.ShutdownFails = true
	job := runPlan(t, d, &ferryv1.RunPlanRequest{Plan: "pair", Operation: "failback"})
	if job.GetOutcome() != "failed" || len(job.GetChildren()) != 2 {
		t.Fatalf("group failback with a member that will not shut down: %s, %d children", job.GetOutcome(), len(job.GetChildren()))
	}
	for _, id := range job.GetChildren() {
		c, err := d.Recovery.GetJob(ctx, &ferryv1.GetJobRequest{Id: id})
		if err != nil || c.GetOutcome() != "failed" || !strings.Contains(c.GetError(), "b-1") {
			t.Fatalf("%s's failback job: %s %q (%v)", c.GetVm(), c.GetOutcome(), c.GetError(), err)
		}
		st, _ := d.Recovery.Status(ctx, &ferryv1.StatusRequest{Vm: c.GetVm()})
		if s := st.GetVms()[0].GetState(); s != "reprotected" {
			t.Fatalf("%s is %s after the group's failback failed", c.GetVm(), s)
		}
	}
	d.VM("b-1").Config.ShutdownFails = false
	job = runPlan(t, d, &ferryv1.RunPlanRequest{Plan: "pair", Operation: "failback"})
	if job.GetOutcome() != "succeeded" {
		t.Fatalf("group failback once every member shuts down: %s %s", job.GetOutcome(), job.GetError())
	}
	failedBackTogether(t, d, job, func(*ferryv1.RecoveryPoint) string { return "shutdown" })
}

// mtDrill starts a drill of cfg with a master target on the default
// networks; both servers' journals are checked at the end.
func mtDrill(t *testing.T, cfg sim.Config) *sim.Drill {
	t.Helper()
	cfg.Networks, cfg.Dir, cfg.Logger, cfg.MasterTarget = sim.DefaultNetworks(), t.TempDir(), ferrytest.Logger(t), true
	d, err := sim.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		journaltest.MustCheck(t, d.PS.Journal())
		journaltest.MustCheck(t, d.MT.Journal())
		d.Close()
	})
	return d
}

// reversedPair starts a drill of cfg's two VMs a-1 and b-1 as replication
// group pair with a master target, fails them over, runs them at the
// recovery site, reprotects them, replicates back for dur and puts plan
// pair of both.
func reversedPair(t *testing.T, cfg sim.Config, dur time.Duration) *sim.Drill {
	t.Helper()
	ctx := context.Background()
	cfg.Groups = []processserver.Group{{Name: "pair", VMs: []string{"a-1", "b-1"}}}
	d := mtDrill(t, cfg)
	run(t, d, time.Minute)
	reverse(t, d, "a-1")
	reverse(t, d, "b-1")
	run(t, d, dur)
	if err := d.ProcessNow(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Recovery.PutPlan(ctx, &ferryv1.RecoveryPlan{Name: "pair", Groups: []*ferryv1.PlanGroup{{Vms: []string{"a-1", "b-1"}}}}); err != nil {
		t.Fatal(err)
	}
	return d
}

// failedBackTogether checks a plan's failback of a group: every member's
// disks equal the ground truth of the marker truthOf names for its point,
// and all took points of one tag.
func failedBackTogether(t *testing.T, d *sim.Drill, job *ferryv1.Job, truthOf func(*ferryv1.RecoveryPoint) string) {
	t.Helper()
	ctx := context.Background()
	tags := map[string]bool{}
	for _, id := range job.GetChildren() {
		c, err := d.Recovery.GetJob(ctx, &ferryv1.GetJobRequest{Id: id})
		if err != nil {
			t.Fatal(err)
		}
		tags[c.GetPoint().GetTag()] = true
		v := d.VM(c.GetVm())
		truth, ok := v.Truth(truthOf(c.GetPoint()))
		if !ok {
			t.Fatalf("no ground truth of %s for point %q", v.Config.Name, c.GetPoint().GetTag())
		}
		for i, dev := range v.Active() {
			if _, err := sim.EqualDevices(ctx, dev, truth.Disks[i]); err != nil {
				t.Fatalf("%s disk%d after the group's failback: %v", v.Config.Name, i, err)
			}
		}
	}
	if len(tags) != 1 {
		t.Fatalf("the group's members failed back to points tagged %v, not one common point", tags)
	}
}

// TestGroupAppConsistentFailback: while a replication group replicates
// back, the process server has the master target cut its multi-VM points;
// an app-consistent failback of the group's plan takes the newest common
// app-consistent one on every member, equal to the ground truth.
func TestGroupAppConsistentFailback(t *testing.T) {
	ctx := context.Background()
	a, b := linux("a-1", 32<<10, sim.Uniform), linux("b-1", 32<<10, sim.Hotspot)
	a.App, b.App = true, true
	d := reversedPair(t, sim.Config{Seed: 17, VMs: []sim.VMConfig{a, b}, GroupInterval: time.Minute, GroupAppInterval: 2 * time.Minute}, 5*time.Minute)
	job := runPlan(t, d, &ferryv1.RunPlanRequest{Plan: "pair", Operation: "failback", Point: "latest-app"})
	if job.GetOutcome() != "succeeded" {
		t.Fatalf("app-consistent failback of the group: %s %s", job.GetOutcome(), job.GetError())
	}
	for _, id := range job.GetChildren() {
		c, _ := d.Recovery.GetJob(ctx, &ferryv1.GetJobRequest{Id: id})
		if p := c.GetPoint(); p.GetConsistency() != ferryv1.Consistency_CONSISTENCY_APP || !strings.HasPrefix(p.GetTag(), "group/pair/") {
			t.Fatalf("%s failed back to %v point %q", c.GetVm(), p.GetConsistency(), p.GetTag())
		}
	}
	failedBackTogether(t, d, job, (*ferryv1.RecoveryPoint).GetTag)
}
