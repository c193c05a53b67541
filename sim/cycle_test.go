package sim_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry/internal/ferrytest"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
	"github.com/ferrydr/ferry/sim"
)

// TestFullCycleDrill runs failover, reprotect, failback and reprotect again
// for several seeds with workloads at every stage; after each stage the
// disks now primary must equal the ground truth, reprotect must send no
// more than 1.1× what differs plus the hashes, and synchronizing before
// failover must cost less downtime than synchronizing during it.
func TestFullCycleDrill(t *testing.T) {
	for seed := uint64(1); seed <= 2; seed++ {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			rep, err := sim.FullCycleDrill(context.Background(), sim.Config{Seed: seed, Dir: t.TempDir(), Logger: ferrytest.Logger(t)}, 2)
			if err != nil {
				t.Fatal(err)
			}
			noFailures(t, rep)
			var before, during *sim.Entry
			count := map[string]int{}
			for _, e := range rep.Entries {
				kind, _, _ := strings.Cut(e.Action, " (")
				count[kind]++
				if strings.HasPrefix(e.Action, "failback (synchronize before") && before == nil {
					before = e
				}
				if strings.HasPrefix(e.Action, "failback (synchronize during") {
					during = e
				}
			}
			want := map[string]int{"unplanned failover": 3, "commit": 6, "reprotect to the master target": 3, "failback": 3,
				"reprotect forward to the process server": 3, "test failover": 3, "cleanup test failover": 3}
			for k, n := range want {
				if count[k] != n {
					t.Fatalf("%d %q entries, want %d (all: %v)", count[k], k, n, count)
				}
			}
			t.Logf("sync before: downtime %v, %d bytes; sync during: downtime %v, %d bytes", before.Downtime, before.DowntimeBytes, during.Downtime, during.DowntimeBytes)
			if !(before.Downtime < during.Downtime) || !(before.DowntimeBytes < during.DowntimeBytes) {
				t.Fatalf("synchronizing before failover should cost less downtime (%v vs %v) and move less then (%d vs %d bytes)",
					before.Downtime, during.Downtime, before.DowntimeBytes, during.DowntimeBytes)
			}
		})
	}
}

// TestFailbackNeedsAPoint: a reprotected VM whose reverse replication has
// produced no point yet cannot fail back, and says so.
func TestFailbackNeedsAPoint(t *testing.T) {
	ctx := context.Background()
	d := mtDrill(t, sim.Config{Seed: 8, VMs: []sim.VMConfig{linux("fb-1", 64<<10, sim.Uniform)}})
	run(t, d, 70*time.Second)
	rep := &sim.Report{}
	v := d.VM("fb-1")
	if _, err := d.Recovery.Failback(ctx, &ferryv1.FailbackRequest{Vm: "fb-1"}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "allowed: test-failover") {
		t.Fatalf("failback of a protected VM: %v", err)
	}
	d.Failover(ctx, rep, v, &ferryv1.FailoverRequest{Vm: "fb-1", Type: ferryv1.FailoverType_FAILOVER_TYPE_PLANNED})
	d.Commit(ctx, rep, v)
	noFailures(t, rep)
	if job, err := d.Recovery.Reprotect(ctx, &ferryv1.ReprotectRequest{Vm: "fb-1", Location: "original"}); err != nil || job.GetOutcome() != "succeeded" {
		t.Fatalf("reprotect: %v %s", err, job.GetError())
	}
	// No agent has replicated anything back yet.
	job, err := d.Recovery.Failback(ctx, &ferryv1.FailbackRequest{Vm: "fb-1", Sync: "before"})
	if err == nil && job.GetOutcome() != "failed" {
		t.Fatal("failback without a point at the master target succeeded")
	}
	msg := job.GetError()
	if err != nil {
		msg = err.Error()
	}
	if !strings.Contains(msg, "no recovery point") {
		t.Fatalf("failback without a point: %s", msg)
	}
}
