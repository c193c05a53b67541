package sim_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/internal/journaltest"
	"github.com/ferrydr/ferry/pkg/retention"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
	"github.com/ferrydr/ferry/sim"
)

// TestAppConsistentPoints runs the simulated application under 20 seeds:
// every app-consistent point passes the application's check, at least one
// crash-consistent point fails it (so the check can fail), and every point
// of either kind equals the ground truth byte for byte.
func TestAppConsistentPoints(t *testing.T) {
	ctx := context.Background()
	var appPoints, crashPoints, crashFailed int
	for seed := uint64(1); seed <= 20; seed++ {
		vm := linux(fmt.Sprintf("app-%d", seed), 64<<10, sim.Uniform)
		vm.App = true
		d, err := sim.New(ctx, sim.Config{Seed: seed, VMs: []sim.VMConfig{vm}, Networks: sim.DefaultNetworks(), Dir: t.TempDir(),
			Logger: ferrytest.Logger(t), CrashInterval: 7 * time.Second, AppInterval: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Run(ctx, 65*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := d.ProcessNow(ctx); err != nil {
			t.Fatal(err)
		}
		v := d.VMs[0]
		pts, err := d.Recovery.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: vm.Name})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pts.GetPoints() {
			truth, ok := v.Truth(p.GetTag())
			if !ok || p.GetTag() == "drain-end" {
				continue
			}
			img := exportDisk(t, d, vm.Name, fmt.Sprint(p.GetId()), "disk0", truth.Disks[0].Size())
			if diff := ferrytest.Diff(ferrytest.Image(t, img), ferrytest.Image(t, truth.Disks[0])); diff != "" {
				t.Fatalf("seed %d point %d (%s) differs from ground truth: %s", seed, p.GetId(), p.GetTag(), diff)
			}
			checkErr := sim.CheckApp(ctx, img)
			switch p.GetConsistency() {
			case ferryv1.Consistency_CONSISTENCY_APP:
				appPoints++
				if checkErr != nil {
					t.Fatalf("seed %d: app-consistent point %d fails the application check: %v", seed, p.GetId(), checkErr)
				}
			default:
				crashPoints++
				if checkErr != nil {
					crashFailed++
				}
			}
		}
		journaltest.MustCheck(t, d.PS.Journal())
		d.Close()
	}
	t.Logf("%d app-consistent points all passed; %d of %d crash-consistent points failed the application check", appPoints, crashFailed, crashPoints)
	if appPoints < 40 || crashFailed == 0 {
		t.Fatalf("%d app points, %d of %d crash points failed: the check must see both", appPoints, crashFailed, crashPoints)
	}
}

// TestQuiesceFailure: an application that does not quiesce gets no
// app-consistent point; the failure is counted and crash points go on.
func TestQuiesceFailure(t *testing.T) {
	ctx := context.Background()
	vm := linux("stuck-app", 64<<10, sim.Uniform)
	vm.FreezeFails = true
	d, err := sim.New(ctx, sim.Config{Seed: 3, VMs: []sim.VMConfig{vm}, Networks: sim.DefaultNetworks(), Dir: t.TempDir(),
		Logger: ferrytest.Logger(t), CrashInterval: 10 * time.Second, AppInterval: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Run(ctx, 65*time.Second); err != nil {
		t.Fatal(err)
	}
	d.ProcessNow(ctx)
	if d.QuiesceFailures != 3 {
		t.Fatalf("%d quiesce failures, want 3", d.QuiesceFailures)
	}
	pts, _ := d.Recovery.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: vm.Name})
	crash := 0
	for _, p := range pts.GetPoints() {
		if p.GetConsistency() == ferryv1.Consistency_CONSISTENCY_APP {
			t.Fatalf("app-consistent point %d cut although the application did not quiesce", p.GetId())
		}
		if strings.Contains(p.GetTag(), "-m") {
			crash++
		}
	}
	if crash < 5 {
		t.Fatalf("%d crash-consistent points, want at least 5", crash)
	}
	job, err := d.Recovery.Failover(ctx, &ferryv1.FailoverRequest{Vm: vm.Name, Type: ferryv1.FailoverType_FAILOVER_TYPE_TEST, Point: "latest-app"})
	if err != nil || job.GetOutcome() != "failed" || !strings.Contains(job.GetError(), "no app-consistent point") {
		t.Fatalf("latest-app without app points: %v %s", err, job.GetError())
	}
}

// TestPolicyThinsAppPoints: the agent cuts app-consistent points every 20
// seconds but the VM's policy keeps one a minute: the others are kept as
// crash-consistent points (still equal to their ground truth); with the
// policy's app frequency at 0, no app-consistent point is kept at all.
func TestPolicyThinsAppPoints(t *testing.T) {
	ctx := context.Background()
	for _, every := range []time.Duration{time.Minute, 0} {
		vm := linux("thin-1", 32<<10, sim.Uniform)
		vm.App = true
		d, err := sim.New(ctx, sim.Config{Seed: 5, VMs: []sim.VMConfig{vm}, Networks: sim.DefaultNetworks(), Dir: t.TempDir(),
			Logger: ferrytest.Logger(t), CrashInterval: 30 * time.Second, AppInterval: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		p, err := d.PS.Policy(retention.DefaultName)
		if err != nil {
			t.Fatal(err)
		}
		p.AppInterval = every
		if err := d.PS.PutPolicy(ctx, p); err != nil {
			t.Fatal(err)
		}
		if err := d.Run(ctx, 4*time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := d.ProcessNow(ctx); err != nil {
			t.Fatal(err)
		}
		pts, _ := d.Recovery.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: vm.Name})
		var apps []time.Time
		thinned := 0
		for _, p := range pts.GetPoints() {
			at := time.Unix(0, p.GetTimeUnixNano())
			if strings.Contains(p.GetTag(), "-app") {
				if p.GetConsistency() == ferryv1.Consistency_CONSISTENCY_APP {
					if len(apps) > 0 && at.Sub(apps[len(apps)-1]) < every {
						t.Fatalf("app points %v apart with a policy of one every %v", at.Sub(apps[len(apps)-1]), every)
					}
					apps = append(apps, at)
				} else {
					thinned++
				}
			}
			truth, err := d.TruthFor(d.VMs[0], p)
			if err != nil {
				t.Fatal(err)
			}
			img := exportDisk(t, d, vm.Name, fmt.Sprint(p.GetId()), "disk0", truth.Disks[0].Size())
			if diff := ferrytest.Diff(ferrytest.Image(t, img), ferrytest.Image(t, truth.Disks[0])); diff != "" {
				t.Fatalf("point %d (%s) differs from ground truth: %s", p.GetId(), p.GetTag(), diff)
			}
		}
		t.Logf("policy app frequency %v: %d app-consistent points kept, %d kept as crash-consistent", every, len(apps), thinned)
		if every == 0 && len(apps) != 0 || every > 0 && (len(apps) < 3 || thinned < 6) {
			t.Fatalf("policy app frequency %v: %d app points, %d thinned", every, len(apps), thinned)
		}
		journaltest.MustCheck(t, d.PS.Journal())
		d.Close()
	}
}
