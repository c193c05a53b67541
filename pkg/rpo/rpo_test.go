package rpo

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ferrydr/ferry/pkg/events"
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

// TestObserve: the gauge follows the alert and only a raise or a clear
// gives an event, of the right kind, naming the RPO and the threshold.
func TestObserve(t *testing.T) {
	var a Alerts
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "rpo_alert"}, []string{"vm"})
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	th := 15 * time.Minute
	for i, c := range []struct {
		age   time.Duration
		kind  string
		gauge float64
	}{
		{time.Minute, "", 0},
		{20 * time.Minute, events.RPOExceeded, 1},
		{30 * time.Minute, "", 1},
		{time.Minute, events.RPORecovered, 0},
	} {
		e, ok := a.Observe("web", now, now.Add(-c.age), th, g, "reverse RPO")
		if ok != (c.kind != "") || e.Kind != c.kind || gauge(g) != c.gauge {
			t.Fatalf("step %d: event %+v %v, gauge %v", i, e, ok, gauge(g))
		}
		if ok && (e.VM != "web" || !e.Time.Equal(now) || !strings.HasPrefix(e.Detail, "reverse RPO "+c.age.String()) || !strings.Contains(e.Detail, "15m0s threshold")) {
			t.Fatalf("step %d: event %+v", i, e)
		}
	}
}

func gauge(g *prometheus.GaugeVec) float64 {
	var m dto.Metric
	g.WithLabelValues("web").Write(&m)
	return m.GetGauge().GetValue()
}
