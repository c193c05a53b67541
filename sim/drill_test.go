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
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
	"github.com/ferrydr/ferry/sim"
)

const mib = 1 << 20

func linux(name string, churn int64, pattern sim.Pattern) sim.VMConfig {
	return sim.VMConfig{Name: name, Disks: []int64{8 * mib, 4 * mib}, Workload: sim.Workload{Churn: churn, Pattern: pattern},
		Machine: &ferryv1.MachineInfo{Os: "linux", MobilityAgentVersion: "9.55", Dhcp: proto.Bool(true), SshEnabledAtBoot: true, SshFirewallAllowed: true}}
}

// start runs a drill whose journal invariants are checked at the end.
func start(t *testing.T, seed uint64, vms ...sim.VMConfig) *sim.Drill {
	t.Helper()
	d, err := sim.New(context.Background(), sim.Config{Seed: seed, VMs: vms, Networks: sim.DefaultNetworks(), Dir: t.TempDir(), Logger: ferrytest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		journaltest.MustCheck(t, d.PS.Journal())
		d.Close()
	})
	return d
}

func run(t *testing.T, d *sim.Drill, dur time.Duration) {
	t.Helper()
	if err := d.Run(context.Background(), dur); err != nil {
		t.Fatal(err)
	}
}

func noFailures(t *testing.T, rep *sim.Report) {
	t.Helper()
	if len(rep.Failures) > 0 {
		var b strings.Builder
		rep.Print(&b)
		t.Fatalf("drill failed:\n%s", b.String())
	}
}

// TestFailoverDrill runs the default scenario (test failover, cleanup,
// unplanned failover, change point, commit) for several seeds; every
// failed-over disk must equal its ground truth.
func TestFailoverDrill(t *testing.T) {
	for seed := uint64(1); seed <= 2; seed++ {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			rep, err := sim.FailoverDrill(context.Background(), sim.Config{Seed: seed, Dir: t.TempDir(), Logger: ferrytest.Logger(t)}, 3)
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
			// 3 VMs x (test, cleanup, unplanned, change point, commit).
			if len(rep.Entries) != 15 || verified != 15 {
				t.Fatalf("%d entries, %d verified; want 15 and 15", len(rep.Entries), verified)
			}
		})
	}
}

// TestPlannedFailoverLosesNothing shuts the source down through its agent
// and fails over to the final point: the failed-over disks equal the
// source's last state, with no write lost.
func TestPlannedFailoverLosesNothing(t *testing.T) {
	ctx := context.Background()
	d := start(t, 3, linux("pf-1", 256<<10, sim.Uniform), linux("pf-2", 128<<10, sim.Log))
	// 30 seconds of writes after the last crash point (at 60s): only the
	// final point has them.
	run(t, d, 90*time.Second)
	rep := &sim.Report{}
	v := d.VM("pf-1")
	before, err := d.PS.Journal().VM(ctx, "pf-1")
	if err != nil {
		t.Fatal(err)
	}
	e := d.Failover(ctx, rep, v, &ferryv1.FailoverRequest{Vm: "pf-1", Type: ferryv1.FailoverType_FAILOVER_TYPE_PLANNED})
	noFailures(t, rep)
	// Fencing raised the epoch: the source's agent (of the old epoch) is
	// refused for good, also by a process server restarted since.
	after, err := d.PS.Journal().VM(ctx, "pf-1")
	if err != nil || after.Epoch != before.Epoch+1 {
		t.Fatalf("epoch %d before the failover, %d after (%v); want it raised by one", before.Epoch, after.Epoch, err)
	}
	if e.Point.GetTag() != "shutdown" || e.LossBytes != 0 || v.Running {
		t.Fatalf("planned failover: point %q, %d bytes lost, source running %v", e.Point.GetTag(), e.LossBytes, v.Running)
	}
	steps := map[string]string{}
	for _, s := range e.Job.GetSteps() {
		steps[s.GetName()] = s.GetOutcome()
	}
	if steps["shut down source"] != "succeeded" || steps["synchronize latest data"] != "succeeded" || steps["fence the source's agent"] != "succeeded" {
		t.Fatalf("steps: %v", steps)
	}
	// The other VM is unaffected and goes on replicating.
	run(t, d, 70*time.Second)
	if st, _ := d.Recovery.Status(ctx, &ferryv1.StatusRequest{Vm: "pf-2"}); st.GetVms()[0].GetState() != "protected" {
		t.Fatalf("pf-2 is %s", st.GetVms()[0].GetState())
	}
	d.Commit(ctx, rep, v)
	noFailures(t, rep)
}

// TestPlannedFailoverFailsWithoutShutdown: a VM that does not shut down
// makes a planned failover fail and stay protected; an unplanned failover
// asked to shut it down proceeds anyway.
func TestPlannedFailoverFailsWithoutShutdown(t *testing.T) {
	ctx := context.Background()
	cfg := linux("stuck-1", 128<<10, sim.Hotspot)
	cfg.ShutdownFails = true
	d := start(t, 4, cfg)
	run(t, d, 70*time.Second)
	job, err := d.Recovery.Failover(ctx, &ferryv1.FailoverRequest{Vm: "stuck-1", Type: ferryv1.FailoverType_FAILOVER_TYPE_PLANNED})
	if err != nil || job.GetOutcome() != "failed" || !strings.Contains(job.GetError(), "did not shut down") {
		t.Fatalf("planned failover of a VM that refuses shutdown: %v, %s: %s", err, job.GetOutcome(), job.GetError())
	}
	st, _ := d.Recovery.Status(ctx, &ferryv1.StatusRequest{Vm: "stuck-1"})
	if got := st.GetVms()[0].GetState(); got != "protected" {
		t.Fatalf("after a failed planned failover the VM is %s", got)
	}
	// Replication goes on.
	run(t, d, 70*time.Second)
	rep := &sim.Report{}
	v := d.VM("stuck-1")
	e := d.Failover(ctx, rep, v, &ferryv1.FailoverRequest{Vm: "stuck-1", Type: ferryv1.FailoverType_FAILOVER_TYPE_UNPLANNED, Shutdown: true, Point: "latest"})
	noFailures(t, rep)
	if e.Job.GetSteps()[1].GetName() != "shut down source" || e.Job.GetSteps()[1].GetOutcome() != "failed" || e.Point.GetTag() != "latest" {
		t.Fatalf("unplanned failover with a failing shutdown: %+v", e.Job.GetSteps())
	}
	// The source still runs, so the fenced agent must stop on its own.
	select {
	case <-v.Agent.Done():
		if status.Code(v.Agent.Err()) != codes.FailedPrecondition || !strings.Contains(v.Agent.Err().Error(), "epoch") {
			t.Fatalf("agent of the old direction stopped with %v", v.Agent.Err())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the agent of the old direction was not refused")
	}
}

// TestLatestVersusLatestProcessed: with data received but not processed,
// "latest" loses less data than "latest processed" and its job takes
// longer, because it processes that data first.
func TestLatestVersusLatestProcessed(t *testing.T) {
	ctx := context.Background()
	d := start(t, 5, linux("lp-1", 512<<10, sim.Uniform))
	run(t, d, 4*time.Minute) // processing runs at 5m: 4 minutes wait unprocessed
	st, _ := d.Recovery.Status(ctx, &ferryv1.StatusRequest{Vm: "lp-1"})
	if st.GetVms()[0].GetUnprocessedBytes() == 0 {
		t.Fatal("no unprocessed data pending")
	}
	v := d.VM("lp-1")
	rep := &sim.Report{}
	processed := d.TestFailover(ctx, rep, v, "latest-processed", "drill-isolated")
	d.CleanupTest(ctx, rep, v)
	latest := d.TestFailover(ctx, rep, v, "latest", "drill-isolated")
	d.CleanupTest(ctx, rep, v)
	noFailures(t, rep)
	dur := func(e *sim.Entry) time.Duration {
		return time.Duration(e.Job.GetEndUnixNano() - e.Job.GetStartUnixNano())
	}
	t.Logf("latest-processed: %d bytes lost, job %v; latest: %d bytes lost, job %v", processed.LossBytes, dur(processed), latest.LossBytes, dur(latest))
	if !(latest.LossBytes < processed.LossBytes) || !(dur(latest) > dur(processed)) {
		t.Fatalf("latest should lose less (%d vs %d bytes) and take longer (%v vs %v)", latest.LossBytes, processed.LossBytes, dur(latest), dur(processed))
	}
}

// TestActionsRefusedByState: each action outside its state fails with an
// error naming the state and the allowed actions.
func TestActionsRefusedByState(t *testing.T) {
	ctx := context.Background()
	d := start(t, 6, linux("st-1", 64<<10, sim.Uniform))
	run(t, d, 70*time.Second)
	want := func(err error, parts ...string) {
		t.Helper()
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("got %v, want FailedPrecondition", err)
		}
		for _, p := range parts {
			if !strings.Contains(err.Error(), p) {
				t.Fatalf("%q does not say %q", err, p)
			}
		}
	}
	_, err := d.Recovery.Commit(ctx, &ferryv1.VMRequest{Vm: "st-1"})
	want(err, "vm st-1 is protected", "commit is not allowed", "allowed: test-failover, planned-failover, unplanned-failover")
	_, err = d.Recovery.ChangePoint(ctx, &ferryv1.ChangePointRequest{Vm: "st-1", Point: "latest"})
	want(err, "change-point is not allowed")
	_, err = d.Recovery.CleanupTest(ctx, &ferryv1.VMRequest{Vm: "st-1"})
	want(err, "cleanup-test is not allowed")
	// Custom point: a specific ID.
	pts, _ := d.Recovery.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: "st-1"})
	first := pts.GetPoints()[0]
	rep := &sim.Report{}
	e := d.TestFailover(ctx, rep, d.VM("st-1"), fmt.Sprint(first.GetId()), "drill-isolated")
	noFailures(t, rep)
	if e.Point.GetId() != first.GetId() {
		t.Fatalf("custom point %d gave point %d", first.GetId(), e.Point.GetId())
	}
	_, err = d.Recovery.Failover(ctx, &ferryv1.FailoverRequest{Vm: "st-1", Type: ferryv1.FailoverType_FAILOVER_TYPE_TEST})
	want(err, "with a test failover running", "allowed: cleanup-test")
	// A test failover on a network that is not isolated is refused.
	d.CleanupTest(ctx, rep, d.VM("st-1"))
	job, err := d.Recovery.Failover(ctx, &ferryv1.FailoverRequest{Vm: "st-1", Type: ferryv1.FailoverType_FAILOVER_TYPE_TEST, Network: "prod"})
	if err != nil || job.GetOutcome() != "failed" || !strings.Contains(job.GetError(), "not isolated") {
		t.Fatalf("test failover on prod: %v %s", err, job.GetError())
	}
	if live := d.Compute.Live(); len(live) != 0 {
		t.Fatalf("instances left behind: %v", live)
	}
	_, err = d.Recovery.Failover(ctx, &ferryv1.FailoverRequest{Vm: "st-1", Type: ferryv1.FailoverType_FAILOVER_TYPE_TEST, Point: "no-such"})
	if status.Code(err) != codes.OK {
		t.Fatalf("bad point option: %v", err)
	}
	jobs, _ := d.Recovery.ListJobs(ctx, &ferryv1.ListJobsRequest{Vm: "st-1"})
	last := jobs.GetJobs()[len(jobs.GetJobs())-1]
	if last.GetOutcome() != "failed" || !strings.Contains(last.GetError(), "want latest, latest-processed, latest-app or a point ID") {
		t.Fatalf("bad point option job: %s %s", last.GetOutcome(), last.GetError())
	}
}
