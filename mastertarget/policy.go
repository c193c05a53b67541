package mastertarget

import (
	"context"
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/events"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/retention"
)

// Event kinds the master target raises.
const (
	EventRPOExceeded  = events.RPOExceeded
	EventRPORecovered = events.RPORecovered
)

// Event is something that happened to a reverse replication.
type Event = events.Event

// Events returns the events of vm (all VMs when empty), oldest first.
func (s *Server) Events(vm string) ([]Event, error) { return s.store.events(vm) }

// applyPolicy applies the failback policy to every reverse replication:
// app-consistent points thinned to its frequency, points older than its
// retention deleted and their records folded into the target disks (the
// primary's own, or the alternate ones), and the RPO alert raised and
// cleared with an event each time.
func (s *Server) applyPolicy(ctx context.Context) error {
	ts, err := s.store.active()
	if err != nil {
		return err
	}
	pol := retention.Failback()
	now := s.clock.Now()
	var errs []error
	for _, t := range ts {
		vmid := ferry.VMID(t.VM)
		if s.failingBack(t.VM) {
			continue // the failback decides what is kept until it ends
		}
		if _, err := s.j.ThinAppPoints(ctx, vmid, pol); err != nil {
			errs = append(errs, err)
		}
		ts, err := s.j.Retain(ctx, vmid, pol, now, func() ([]blockdev.Device, error) { return s.devices(t.VM) })
		if err != nil {
			errs = append(errs, fmt.Errorf("vm %s: retention: %w", t.VM, err))
		} else if ts.PointsDeleted > 0 || ts.RecordsDeleted > 0 {
			s.log.Info("retention", "vm", t.VM, "points_deleted", ts.PointsDeleted, "records_deleted", ts.RecordsDeleted,
				"bytes_freed", ts.BytesFreed, "bytes_applied", ts.BytesApplied)
		}
		vm, err := s.j.VM(ctx, vmid)
		if err != nil {
			if !errors.Is(err, journal.ErrNoVM) {
				errs = append(errs, err)
			}
			continue
		}
		if vm.LatestPoint.IsZero() {
			continue // the first sync has not cut a point yet
		}
		e, ok := s.alerts.Observe(t.VM, now, vm.LatestPoint, pol.RPOThreshold, s.rpoAlert, "reverse replication RPO (failback policy)")
		if !ok {
			continue
		}
		if e.Kind == EventRPOExceeded {
			s.log.Warn("reverse replication RPO above threshold", "vm", t.VM, "detail", e.Detail)
		} else {
			s.log.Info("reverse replication RPO back under threshold", "vm", t.VM, "detail", e.Detail)
		}
		errs = append(errs, s.store.addEvent(e))
	}
	return errors.Join(errs...)
}

// devices returns the disks vm's reverse replication lands on.
func (s *Server) devices(vm string) ([]blockdev.Device, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	devs, ok := s.targets[vm]
	if !ok {
		return nil, fmt.Errorf("vm %s: no target disks attached", vm)
	}
	return devs, nil
}

// failingBack reports whether a failback of vm is under way.
func (s *Server) failingBack(vm string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failbacks[vm]
}

func newRPOAlert(reg prometheus.Registerer) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ferry_mt_rpo_alert",
		Help: "1 while a reverse replication's RPO is above the failback policy's threshold."}, []string{"vm"})
	reg.MustRegister(g)
	return g
}
