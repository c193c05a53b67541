package sim_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/internal/journaltest"
	"github.com/ferrydr/ferry/processserver"
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
// a new point arrives, the alert clears with another event. Every event
// also reaches a webhook receiver as JSON: the health changes (critical
// when the agent went, healthy when it came back) and the RPO alerts.
func TestRPOAlert(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	var posted []processserver.WebhookEvent
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e processserver.WebhookEvent
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "want a JSON POST", http.StatusBadRequest)
			return
		}
		if err := json.NewDecoder(r.Body).Decode(&e); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if len(posted) == 0 {
			// The first delivery fails: the server must retry it.
			posted = append(posted, processserver.WebhookEvent{Kind: "refused"})
			http.Error(w, "try again", http.StatusServiceUnavailable)
			return
		}
		posted = append(posted, e)
	}))
	defer hook.Close()
	d, err := sim.New(ctx, sim.Config{Seed: 14, VMs: []sim.VMConfig{linux("rpo-1", 16<<10, sim.Uniform)}, Networks: sim.DefaultNetworks(),
		Dir: t.TempDir(), Logger: ferrytest.Logger(t), ProcessInterval: time.Minute, RPOThreshold: 5 * time.Minute, Webhooks: []string{hook.URL},
		Heartbeat: 200 * time.Millisecond})
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
			if strings.HasPrefix(e.GetKind(), "rpo-") {
				kinds = append(kinds, e.GetKind())
			}
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
	// Health is judged in wall-clock time (heartbeats are): the loss shows
	// once the grace for a reconnect has passed.
	ferrytest.WaitFor(t, 10*time.Second, "critical health", func() bool {
		st, err := d.Recovery.Status(ctx, &ferryv1.StatusRequest{Vm: "rpo-1"})
		return err == nil && st.GetVms()[0].GetHealth() == "critical"
	})
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
	// The webhook got the event log, in order, each event once (the first
	// after a refused try and a retry): the health going critical when the
	// agent went and healthy again at the end, the RPO alert and its end.
	resp, err := d.Recovery.ListEvents(ctx, &ferryv1.ListEventsRequest{Vm: "rpo-1"})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, e := range resp.GetEvents() {
		want = append(want, e.GetKind()+": "+e.GetDetail())
	}
	var got []string
	ferrytest.WaitFor(t, 30*time.Second, "the webhook deliveries", func() bool {
		mu.Lock()
		defer mu.Unlock()
		got = got[:0]
		for _, e := range posted {
			got = append(got, e.Kind+": "+e.Detail)
		}
		return len(got) >= len(want)+1
	})
	t.Logf("webhook deliveries:\n%s", strings.Join(got, "\n"))
	if got[0] != "refused: " || !slices.Equal(got[1:], want) {
		t.Fatalf("webhook got\n%s\nwant a refused try, then\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var critical, healthyLast bool
	for _, w := range want {
		if strings.HasPrefix(w, "health-changed") {
			critical = critical || (strings.Contains(w, "-> critical") && strings.Contains(w, "agent disconnected"))
			healthyLast = strings.Contains(w, "-> healthy")
		}
	}
	if !critical || !healthyLast {
		t.Fatalf("health events: want one to critical (agent disconnected) and the last to healthy:\n%s", strings.Join(want, "\n"))
	}
	mu.Lock()
	defer mu.Unlock()
	for _, e := range posted[1:] {
		if e.VM != "rpo-1" || e.Server == "" || e.Version == "" || e.Time.IsZero() {
			t.Fatalf("webhook event without its VM, server, version or time: %+v", e)
		}
	}
}
