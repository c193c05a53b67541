package retention_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/retention"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// TestFailback pins the seed's failback policy, which is valid.
func TestFailback(t *testing.T) {
	p := retention.Failback()
	if p.Name != retention.FailbackName || p.CrashInterval != 5*time.Minute || p.RPOThreshold != 15*time.Minute || p.Retention != 24*time.Hour || p.AppInterval != time.Hour || !p.Builtin {
		t.Fatalf("failback policy %+v", p)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestValidate: each bound refuses the value just outside it and names
// the field; the values at the bounds are accepted.
func TestValidate(t *testing.T) {
	ok := retention.Policy{Name: "gold", Retention: time.Hour, CrashInterval: time.Second, AppInterval: time.Hour, RPOThreshold: time.Minute}
	if err := ok.Validate(); err != nil {
		t.Fatalf("a policy at the bounds: %v", err)
	}
	fast := ok
	fast.AppInterval = time.Second
	if err := fast.Validate(); err != nil {
		t.Fatalf("app points every second: %v", err)
	}
	long := ok
	long.Retention, long.CrashInterval, long.AppInterval = 35*24*time.Hour, 35*24*time.Hour, 0
	if err := long.Validate(); err != nil {
		t.Fatalf("a policy at the upper bounds: %v", err)
	}
	for _, tc := range []struct {
		change func(*retention.Policy)
		want   string
	}{
		{func(p *retention.Policy) { p.Name = "" }, "policy name"},
		{func(p *retention.Policy) { p.Name = "a/b" }, "policy name"},
		{func(p *retention.Policy) { p.Retention = time.Hour - time.Second }, "retention"},
		{func(p *retention.Policy) { p.Retention = 35*24*time.Hour + time.Second }, "retention"},
		{func(p *retention.Policy) { p.CrashInterval = time.Second - 1 }, "crash-consistent frequency"},
		{func(p *retention.Policy) { p.CrashInterval = p.Retention + time.Second }, "crash-consistent frequency"},
		{func(p *retention.Policy) { p.AppInterval = -1 }, "app-consistent frequency"},
		{func(p *retention.Policy) { p.AppInterval = time.Second - 1 }, "app-consistent frequency"},
		{func(p *retention.Policy) { p.AppInterval = p.Retention + time.Second }, "app-consistent frequency"},
		{func(p *retention.Policy) { p.RPOThreshold = time.Minute - time.Second }, "RPO threshold"},
	} {
		p := ok
		tc.change(&p)
		if err := p.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error naming %s", p, err, tc.want)
		}
	}
}

// TestExpire: points older than the window go, a point exactly at the
// window's edge stays, and when every point is older than the window the
// newest stays (nothing goes).
func TestExpire(t *testing.T) {
	p := retention.Policy{Retention: 2 * time.Hour}
	pts := []ferry.Point{{ID: 10, Time: t0}, {ID: 20, Time: t0.Add(time.Hour)}, {ID: 30, Time: t0.Add(2 * time.Hour)}, {ID: 40, Time: t0.Add(3 * time.Hour)}}
	for _, tc := range []struct {
		now  time.Duration
		want ferry.Seq
	}{
		{2 * time.Hour, 0},  // t0 is at the edge: kept
		{3 * time.Hour, 20}, // t0 is older: it goes, 20 is the oldest kept
		{4 * time.Hour, 30},
		{4*time.Hour + time.Second, 40},
		{5 * time.Hour, 40},
		{6 * time.Hour, 0}, // all older than the window: keep them
	} {
		if got := retention.Expire(pts, p, t0.Add(tc.now)); got != tc.want {
			t.Errorf("at +%v: trim to %d, want %d", tc.now, got, tc.want)
		}
	}
	if got := retention.Expire(nil, p, t0); got != 0 {
		t.Errorf("no points: %d", got)
	}
}

// TestThin: app-consistent points closer than the app interval to the
// last one kept are demoted (one exactly an interval later is kept), none
// are kept with app points off, and multi-VM points are left alone.
func TestThin(t *testing.T) {
	app := func(id ferry.Seq, at time.Duration, tag string) ferry.Point {
		return ferry.Point{ID: id, Consistency: ferry.App, Time: t0.Add(at), Tag: tag}
	}
	pts := []ferry.Point{
		app(1, 0, ""),
		{ID: 2, Consistency: ferry.Crash, Time: t0.Add(10 * time.Minute)},
		app(3, 30*time.Minute, ""),
		app(4, time.Hour, ""), // exactly an interval after 1: kept
		app(5, 90*time.Minute, "group/g/3"),
		app(6, 119*time.Minute, ""),
		app(7, 2*time.Hour, ""),
	}
	if got := retention.Thin(pts, retention.Policy{AppInterval: time.Hour}); !slices.Equal(got, []ferry.Seq{3, 6}) {
		t.Errorf("thinned %v, want [3 6]", got)
	}
	if got := retention.Thin(pts, retention.Policy{}); !slices.Equal(got, []ferry.Seq{1, 3, 4, 6, 7}) {
		t.Errorf("app points off: thinned %v, want every app point but the group's", got)
	}
}
