package policy

import (
	"testing"
	"time"
)

// TestAlerts: an alert is raised once when the RPO passes the threshold,
// stays raised without a second transition, clears once, and a forgotten
// VM starts over.
func TestAlerts(t *testing.T) {
	var a Alerts
	th := 15 * time.Minute
	steps := []struct {
		rpo  time.Duration
		want Transition
		on   bool
	}{
		{time.Minute, Steady, false},
		{th, Steady, false}, // at the threshold: not above it
		{th + time.Second, Raised, true},
		{time.Hour, Steady, true},
		{time.Minute, Cleared, false},
		{time.Minute, Steady, false},
		{time.Hour, Raised, true},
	}
	for i, s := range steps {
		if got := a.Check("vm", s.rpo, th); got != s.want || a.Alerting("vm") != s.on {
			t.Fatalf("step %d (rpo %v): transition %v alerting %v, want %v %v", i, s.rpo, got, a.Alerting("vm"), s.want, s.on)
		}
	}
	if a.Alerting("other") {
		t.Fatal("a VM never checked is alerting")
	}
	a.Forget("vm")
	if a.Alerting("vm") || a.Check("vm", time.Hour, th) != Raised {
		t.Fatal("a forgotten VM does not start over")
	}
}

// TestFailback pins the seed's failback policy.
func TestFailback(t *testing.T) {
	p := Failback()
	if p.Name != FailbackName || p.CrashInterval != 5*time.Minute || p.RPOThreshold != 15*time.Minute || p.Retention != 24*time.Hour || p.AppInterval != time.Hour || !p.Builtin {
		t.Fatalf("failback policy %+v", p)
	}
	if q := FromProto(p.Proto(nil)); q.Retention != p.Retention || q.RPOThreshold != p.RPOThreshold || q.AppInterval != p.AppInterval || q.CrashInterval != p.CrashInterval {
		t.Fatalf("wire round trip: %+v", q)
	}
}
