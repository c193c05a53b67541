package sim_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/internal/journaltest"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
	"github.com/ferrydr/ferry/sim"
)

// TestRetention runs 72 hours of virtual time at steady churn with a 24 h
// retention window: the number of points and the journal's stored bytes
// stay within the window's bound instead of growing, and the oldest and
// newest retained points still equal their ground truth.
func TestRetention(t *testing.T) {
	ctx := context.Background()
	vm := linux("ret-1", 1<<10, sim.Uniform)
	d, err := sim.New(ctx, sim.Config{Seed: 12, VMs: []sim.VMConfig{vm}, Networks: sim.DefaultNetworks(), Dir: t.TempDir(),
		Logger: ferrytest.Logger(t), Tick: time.Minute, CrashInterval: 10 * time.Minute, ProcessInterval: 30 * time.Minute, Retention: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	defer journaltest.MustCheck(t, d.PS.Journal())
	var stored []uint64
	for h := 6; h <= 72; h += 6 {
		if err := d.Run(ctx, 6*time.Hour); err != nil {
			t.Fatal(err)
		}
		if err := d.ProcessNow(ctx); err != nil {
			t.Fatal(err)
		}
		st, err := d.PS.Journal().VM(ctx, "ret-1")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%2d h: %3d points, %6.1f MiB stored, records %d..%d, journal file %.0f MiB", h, st.Points, float64(st.StoredBytes)/(1<<20), st.BaseSeq+1, st.LastSeq, float64(d.PS.Journal().Size())/(1<<20))
		// 24 h of 10-minute points, plus what waits for processing.
		if st.Points > 24*6+4 {
			t.Fatalf("%d h: %d points kept with a 24 h window", h, st.Points)
		}
		// Nothing inside the window goes: once it is full, the oldest
		// point is less than one crash interval younger than the window.
		if h >= 24 {
			pts, err := d.PS.Journal().Points(ctx, "ret-1")
			if err != nil {
				t.Fatal(err)
			}
			oldest := d.Clock.Now().Sub(pts[0].Time)
			if st.Points < 24*6-1 || oldest > 24*time.Hour || oldest < 24*time.Hour-10*time.Minute {
				t.Fatalf("%d h: %d points, the oldest %v old; want the whole 24 h window of 10-minute points", h, st.Points, oldest)
			}
		}
		stored = append(stored, st.StoredBytes)
	}
	// From 30 h on the window is full: storage stays level.
	if last, at30 := stored[len(stored)-1], stored[4]; float64(last) > 1.25*float64(at30) {
		t.Fatalf("stored bytes grew from %d at 30 h to %d at 72 h under a 24 h window", at30, last)
	}
	pts, err := d.Recovery.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: "ret-1"})
	if err != nil {
		t.Fatal(err)
	}
	v := d.VMs[0]
	all := pts.GetPoints()
	for _, p := range []*ferryv1.RecoveryPoint{all[0], all[1], all[len(all)/2], all[len(all)-1]} {
		truth, err := d.TruthFor(v, p)
		if err != nil {
			t.Fatal(err)
		}
		age := d.Clock.Now().Sub(time.Unix(0, p.GetTimeUnixNano()))
		if age > 24*time.Hour+time.Hour {
			t.Fatalf("point %d is %v old with a 24 h window", p.GetId(), age)
		}
		for i, disk := range truth.Disks {
			img := exportDisk(t, d, "ret-1", fmt.Sprint(p.GetId()), fmt.Sprintf("disk%d", i), disk.Size())
			if diff := ferrytest.Diff(ferrytest.Image(t, img), ferrytest.Image(t, disk)); diff != "" {
				t.Fatalf("point %d (%v old) disk%d differs from ground truth after retention: %s", p.GetId(), age.Round(time.Minute), i, diff)
			}
		}
	}
}

// TestRPOAlert: when a VM's agent stops, its RPO passes the threshold and
// an alert is raised (status and an event); when replication resumes and
// a new point arrives, the alert clears with another event.
func TestRPOAlert(t *testing.T) {
	ctx := context.Background()
	d, err := sim.New(ctx, sim.Config{Seed: 14, VMs: []sim.VMConfig{linux("rpo-1", 16<<10, sim.Uniform)}, Networks: sim.DefaultNetworks(),
		Dir: t.TempDir(), Logger: ferrytest.Logger(t), ProcessInterval: time.Minute, RPOThreshold: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	alert := func() bool {
		st, err := d.Recovery.Status(ctx, &ferryv1.StatusRequest{Vm: "rpo-1"})
		if err != nil {
			t.Fatal(err)
		}
		return st.GetVms()[0].GetRpoAlert()
	}
	events := func() []string {
		resp, err := d.Recovery.ListEvents(ctx, &ferryv1.ListEventsRequest{Vm: "rpo-1"})
		if err != nil {
			t.Fatal(err)
		}
		var kinds []string
		for _, e := range resp.GetEvents() {
			kinds = append(kinds, e.GetKind())
		}
		return kinds
	}
	run(t, d, 4*time.Minute)
	if alert() || len(events()) != 0 {
		t.Fatalf("alert while replicating: %v %v", alert(), events())
	}
	v := d.VMs[0]
	v.Agent.Abort() // the agent's machine loses its link
	v.Agent = nil
	run(t, d, 10*time.Minute)
	if !alert() || len(events()) != 1 || events()[0] != "rpo-exceeded" {
		t.Fatalf("no alert after 10 minutes without points: %v %v", alert(), events())
	}
	st, _ := d.Recovery.Status(ctx, &ferryv1.StatusRequest{Vm: "rpo-1"})
	// The machine's own agent comes back, from its state directory (the
	// process server replicates a VM from one agent instance).
	if err := d.StartAgent(ctx, v, d.PS.Addr(), st.GetVms()[0].GetEpoch(), ""); err != nil {
		t.Fatal(err)
	}
	run(t, d, 2*time.Minute)
	if alert() || len(events()) != 2 || events()[1] != "rpo-recovered" {
		t.Fatalf("alert did not clear after replication resumed: %v %v", alert(), events())
	}
}
