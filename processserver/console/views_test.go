package console

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/processserver"
)

var t0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

func pts(specs ...string) []pointRow {
	// "SECONDS:KIND" with KIND c (crash), a (app), m (crash, multi-VM).
	var out []pointRow
	for i, s := range specs {
		var sec int
		var kind string
		fmt.Sscanf(strings.Replace(s, ":", " ", 1), "%d %s", &sec, &kind)
		p := pointRow{ID: ferry.Seq(i + 1), Time: t0.Add(time.Duration(sec) * time.Second), Consistency: ferry.Crash.String()}
		if kind == "a" {
			p.Consistency = ferry.App.String()
		}
		if kind == "m" {
			p.Joined = []string{"db-1 #7"}
		}
		out = append(out, p)
	}
	return out
}

// TestBuildTimeline: every point of the span is in exactly one mark, at
// the column of its time; a mark is app when any of its points is, multi
// when any is; points before the span are counted, not drawn.
func TestBuildTimeline(t *testing.T) {
	points := pts("-5:c", "0:c", "1:a", "50:m", "99:c", "100:a", "101:c")
	tl := buildTimeline(points, t0, t0.Add(100*time.Second), 10)
	if tl.Before != 1 || tl.Points != 5 || tl.App != 2 || tl.Crash != 3 || tl.Multi != 1 {
		t.Fatalf("counts: %+v", tl)
	}
	type m struct {
		x           float64
		app, multi  bool
		first, last ferry.Seq
		count       int
	}
	var got []m
	for _, k := range tl.Marks {
		got = append(got, m{k.X, k.App, k.Multi, k.First, k.Last, k.Count})
	}
	want := []m{{0.5, true, false, 2, 3, 2}, {5.5, false, true, 4, 4, 1}, {9.5, true, false, 5, 6, 2}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("marks %v, want %v", got, want)
	}
	if tl.Marks[0].Title() != "2 points #2–#3, newest app-consistent, 2026-12-01 00:00:01Z" ||
		tl.Marks[1].Title() != "point #4, crash-consistent, multi-VM, 2026-12-01 00:00:50Z" {
		t.Fatalf("titles %q, %q", tl.Marks[0].Title(), tl.Marks[1].Title())
	}
	var ticks []string
	for _, k := range tl.Ticks {
		ticks = append(ticks, fmt.Sprintf("%g:%s", k.X, k.Label))
	}
	if strings.Join(ticks, " ") != "0:−1m40s 2.5:−1m15s 5:−50s 7.5:−25s 10:now" {
		t.Fatalf("ticks %v", ticks)
	}
	if !strings.Contains(tl.Summary(), "5 recovery points") {
		t.Fatalf("summary %q", tl.Summary())
	}
	if e := buildTimeline(points, t0, t0, 10); len(e.Marks) != 0 || e.Points != 0 {
		t.Fatalf("empty span: %+v", e)
	}
	if e := buildTimeline(points, t0, t0.Add(100*time.Second), 0); len(e.Marks) != 0 || e.Points != 0 {
		t.Fatalf("no width: %+v", e)
	}
}

// TestDrillsOf: drills are the test failovers that ended, with RPO from
// their point and RTO from their time, and their checks counted.
func TestDrillsOf(t *testing.T) {
	pt := &ferry.Point{ID: 9, Time: t0.Add(-30 * time.Second)}
	jobs := []processserver.Job{
		{ID: 1, Type: processserver.ActionTestFailover, Start: t0, End: t0.Add(90 * time.Second), Outcome: ferry.OutcomeSucceeded, Point: pt,
			Findings: []processserver.Finding{{OK: true}, {OK: true}, {OK: false}, {Unknown: true}}},
		{ID: 2, Type: "cleanup-test", Start: t0, End: t0.Add(time.Second), Outcome: ferry.OutcomeSucceeded},
		{ID: 3, Type: processserver.ActionTestFailover, Start: t0, Outcome: ferry.OutcomeRunning},
		{ID: 4, Type: "plan-" + processserver.PlanTestFailover, Start: t0, End: t0.Add(time.Minute), Outcome: ferry.OutcomeFailed, Children: []uint64{5, 6}},
		{ID: 5, Type: processserver.ActionTestFailover, Start: t0, End: t0.Add(time.Second), Outcome: ferry.OutcomeSucceeded,
			Point: &ferry.Point{Time: t0.Add(-10 * time.Second)}, Findings: []processserver.Finding{{OK: true}}},
		{ID: 6, Type: processserver.ActionTestFailover, Start: t0, End: t0.Add(time.Second), Outcome: ferry.OutcomeFailed,
			Point: &ferry.Point{Time: t0.Add(-20 * time.Second)}, Findings: []processserver.Finding{{OK: false}}},
	}
	ds := drillsOf(jobs, 10)
	if len(ds) != 2 || ds[0].Job.ID != 1 || ds[1].Job.ID != 4 {
		t.Fatalf("drills %+v", ds)
	}
	if d := ds[0]; d.RPO != 30*time.Second || !d.HasRPO || d.RTO != 90*time.Second || d.Passed != 2 || d.Failed != 1 || d.Unknown != 1 {
		t.Fatalf("drill 1: %+v", d)
	}
	// The plan's drill: its VMs' jobs are in it, not drills of their own.
	if d := ds[1]; !d.HasRPO || d.RPO != 20*time.Second || d.RTO != time.Minute || d.Passed != 1 || d.Failed != 1 {
		t.Fatalf("drill 4: %+v", d)
	}
	if ds := drillsOf(jobs, 1); len(ds) != 1 || ds[0].Job.ID != 4 {
		t.Fatalf("newest 1: %+v", ds)
	}
	c := drillChart(ds[1:])
	if c.Max != time.Minute || len(c.Bars) != 1 || !c.Bars[0].Failed || c.Bars[0].RTOH != chartHeight || !c.Bars[0].HasRPO || c.Bars[0].RPOH != chartHeight/3 {
		t.Fatalf("chart %+v", c)
	}
	c = drillChart(drillsOf(jobs, 10))
	if b := c.Bars[0]; b.RPOH != chartHeight/4 || b.RTOH != chartHeight*3/4 || b.RTOY != chartHeight/4 || b.RPOY != chartHeight*3/4 || b.Label != "#1" {
		t.Fatalf("chart bar 1: %+v", b)
	}
	// Two drills share the width right of the axis labels: 450 each, the
	// pair 40 wide from a tenth into its slot.
	var xs []string
	for _, b := range c.Bars {
		xs = append(xs, fmt.Sprintf("%g+%g→%g", b.X, b.W, b.LabelX))
	}
	if got := strings.Join(xs, " "); got != "105+40→145 555+40→595" {
		t.Fatalf("bars at %s", got)
	}
	var ticks []string
	for _, k := range c.Ticks {
		ticks = append(ticks, fmt.Sprintf("%g:%s", k.X, k.Label))
	}
	if got := strings.Join(ticks, " "); got != "180:0 135:30s 90:1m 45:1m30s 0:2m" {
		t.Fatalf("chart ticks %s", got)
	}
	// Drills that took no time at all have nothing to draw.
	if z := drillChart([]drill{{Job: processserver.Job{ID: 9}}}); len(z.Bars) != 0 {
		t.Fatalf("chart of drills of no time: %+v", z)
	}
	if len(drillChart(nil).Bars) != 0 {
		t.Fatal("chart of no drills")
	}
}

// TestItemsOrder: sorting by each column, both ways, ties by name; the
// filter matches any of the shown fields in any case.
func TestItemsOrder(t *testing.T) {
	rows := []itemRow{
		{Name: "b", Health: "healthy", RPO: 5 * time.Second, HasRPO: true, Policy: "default", Connected: true},
		{Name: "a", Health: "critical", Reason: "agent disconnected", HasRPO: false, Policy: "vmware-72h"},
		{Name: "c", Health: "warning", RPO: time.Hour, HasRPO: true, Group: "Payroll", Connected: true},
		{Name: "d", Health: "healthy", RPO: time.Second, HasRPO: true, Policy: "default", Connected: true},
	}
	names := func(q itemQuery) string {
		r := append([]itemRow(nil), rows...)
		sortItems(r, q)
		var s string
		for _, x := range r {
			s += x.Name
		}
		return s
	}
	for q, want := range map[itemQuery]string{
		{Sort: "health"}: "acbd", {Sort: "health", Desc: true}: "bdca", {Sort: "name"}: "abcd", {Sort: "name", Desc: true}: "dcba",
		{Sort: "rpo"}: "dbca", {Sort: "rpo", Desc: true}: "acbd", {Sort: "policy"}: "cbda", {Sort: "group"}: "abdc",
		{Sort: "agent"}: "abcd",
	} {
		if got := names(q); got != want {
			t.Errorf("%+v: %s, want %s", q, got, want)
		}
	}
	var hit []string
	for _, r := range rows {
		if matches(r, "PAYROLL") || matches(r, "disconnected") {
			hit = append(hit, r.Name)
		}
	}
	if strings.Join(hit, "") != "ac" {
		t.Errorf("filter: %v", hit)
	}
	h := itemQuery{Sort: "rpo", Q: "web"}.headers()
	if h[3].Sort != "ascending" || !strings.Contains(h[3].Href, "desc=1") || !strings.Contains(h[3].Href, "q=web") || h[0].Sort != "none" || strings.Contains(h[0].Href, "desc") {
		t.Errorf("headers %+v", h)
	}
}

func TestText(t *testing.T) {
	for d, want := range map[time.Duration]string{
		850 * time.Millisecond: "850ms", 12 * time.Second: "12s", 4*time.Minute + 10*time.Second: "4m10s", 5 * time.Minute: "5m",
		3 * time.Hour: "3h", 25*time.Hour + 30*time.Minute: "25h30m", 52 * time.Hour: "2d4h", 72 * time.Hour: "3d", -2 * time.Second: "−2s", 0: "0",
	} {
		if got := durText(d); got != want {
			t.Errorf("durText(%v) = %q, want %q", d, got, want)
		}
	}
	for d, want := range map[time.Duration]time.Duration{0: 100 * time.Millisecond, 3 * time.Second: 5 * time.Second, 5 * time.Second: 5 * time.Second,
		61 * time.Second: 2 * time.Minute, 50 * time.Hour: 50 * time.Hour} {
		if got := niceCeil(d); got != want {
			t.Errorf("niceCeil(%v) = %v, want %v", d, got, want)
		}
	}
	if got := tail("a\nb\nc\n", 2); got != "b\nc" {
		t.Errorf("tail %q", got)
	}
	if got := newest([]int{1, 2, 3}, 2); fmt.Sprint(got) != "[3 2]" {
		t.Errorf("newest %v", got)
	}
	if w := windows(24 * time.Hour); len(w) != 4 || w[0].span != 24*time.Hour {
		t.Errorf("windows %v", w)
	}
	if w := windows(time.Hour); len(w) != 2 {
		t.Errorf("windows of 1 h retention %v", w)
	}
}
