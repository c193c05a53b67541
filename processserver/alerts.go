package processserver

import (
	"context"
	"sort"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrydr/ferry/pkg/events"
)

// Event kinds.
const (
	EventRPOExceeded  = events.RPOExceeded
	EventRPORecovered = events.RPORecovered
)

// Event is something that happened to a VM that operators must see.
type Event = events.Event

// Events returns the events of vm (all VMs when empty), oldest first: this
// server's and the master target's.
func (s *Server) Events(ctx context.Context, vm string) ([]Event, error) {
	out, err := s.ctl.events(vm)
	if err != nil || s.mt == nil {
		return out, err
	}
	// Reverse replication's events are the master target's.
	theirs, err := s.mt.events(ctx, vm)
	if err != nil {
		s.log.Warn("the master target's events are left out: it did not answer", "err", err)
		return out, nil
	}
	out = append(out, theirs...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, nil
}

// checkRPO raises an alert for every VM whose RPO (age of its newest
// point) is above its policy's threshold, and clears it when the RPO is back under:
// the ferry_ps_rpo_alert gauge and an event each time.
func (s *Server) checkRPO(ctx context.Context) error {
	vms, err := s.j.VMs(ctx)
	if err != nil {
		return err
	}
	now := s.clock.Now()
	for _, vm := range vms {
		st, err := s.ctl.state(string(vm.Name))
		if err != nil || (st.State != "" && st.State != StateEnabling && st.State != StateProtected) || vm.LatestPoint.IsZero() {
			continue
		}
		pol, err := s.policyFor(string(vm.Name))
		if err != nil {
			return err
		}
		e, ok := s.alerts.Observe(string(vm.Name), now, vm.LatestPoint, pol.RPOThreshold, s.rpoAlert, "RPO")
		if !ok {
			continue
		}
		if e.Kind == EventRPOExceeded {
			s.log.Warn("RPO above threshold", "vm", vm.Name, "detail", e.Detail)
		} else {
			s.log.Info("RPO back under threshold", "vm", vm.Name, "detail", e.Detail)
		}
		s.event(e)
	}
	return nil
}

// alerting reports whether vm's RPO is above its threshold now.
func (s *Server) alertingFor(vm string) bool { return s.alerts.Alerting(vm) }

func newRPOAlert(reg prometheus.Registerer) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ferry_ps_rpo_alert", Help: "1 while a VM's RPO is above the threshold."}, []string{"vm"})
	if reg != nil {
		reg.MustRegister(g)
	}
	return g
}

// event records e in the event log; a failure to record it is logged
// (the event is informational, what caused it went on).
func (s *Server) event(e Event) {
	if err := s.ctl.addEvent(e); err != nil {
		s.log.Error("event log", "err", err, "vm", e.VM, "kind", e.Kind, "detail", e.Detail)
	}
	if s.hooks != nil {
		s.hooks.send(e)
	}
}
