// Package rpo tracks, for both of Ferry's receivers, which VMs' recovery
// point objective is above their policy's threshold: it raises an alert
// once when the newest point grows too old and clears it once a new point
// arrives, with an event for each and a gauge that follows.
package rpo

import (
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrydr/ferry/pkg/events"
)

// Transition is a change of a VM's RPO alert.
type Transition int

// RPO alert transitions.
const (
	Steady Transition = iota
	Raised
	Cleared
)

// Alerts tracks which VMs' RPO is above their threshold. It is safe for
// concurrent use.
type Alerts struct {
	mu   sync.Mutex
	over map[string]bool
}

// Check records vm's RPO (now minus its newest point) against threshold
// and reports whether the alert was raised or cleared by it.
func (a *Alerts) Check(vm string, rpo, threshold time.Duration) Transition {
	over := rpo > threshold
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.over == nil {
		a.over = map[string]bool{}
	}
	was := a.over[vm]
	a.over[vm] = over
	switch {
	case over && !was:
		return Raised
	case !over && was:
		return Cleared
	}
	return Steady
}

// Alerting reports whether vm's alert is raised.
func (a *Alerts) Alerting(vm string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.over[vm]
}

// Observe checks vm's RPO (now minus its newest point) against threshold,
// sets vm's gauge (1 while the alert is raised) and returns the event of a
// raise or a clear (ok false when nothing changed). what names the RPO in
// the event ("RPO", "reverse replication RPO").
func (a *Alerts) Observe(vm string, now, newest time.Time, threshold time.Duration, gauge *prometheus.GaugeVec, what string) (e events.Event, ok bool) {
	rpo := now.Sub(newest)
	tr := a.Check(vm, rpo, threshold)
	v := 0.0
	if a.Alerting(vm) {
		v = 1
	}
	gauge.WithLabelValues(vm).Set(v)
	switch tr {
	case Raised:
		return events.Event{Time: now, VM: vm, Kind: events.RPOExceeded,
			Detail: fmt.Sprintf("%s %v is above the %v threshold (newest point %s)", what, rpo.Round(time.Second), threshold, newest.Format(time.RFC3339))}, true
	case Cleared:
		return events.Event{Time: now, VM: vm, Kind: events.RPORecovered,
			Detail: fmt.Sprintf("%s %v is back under the %v threshold", what, rpo.Round(time.Second), threshold)}, true
	}
	return events.Event{}, false
}

// Forget drops vm (it stopped replicating here).
func (a *Alerts) Forget(vm string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.over, vm)
}
