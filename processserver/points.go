package processserver

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/clock"
	"github.com/ferrydr/ferry/pkg/journal"
)

// resolvePoint turns a point option into a point of vm, processing first
// for "latest".
func (s *Server) resolvePoint(ctx context.Context, vm ferry.VMID, opt string) (ferry.Point, journal.ProcessStats, error) {
	switch opt {
	case ferry.PointLatest:
		p, ps, err := s.j.CutPoint(ctx, vm, ferry.PointLatest, clock.From(ctx, s.clock).Now())
		s.charge(ctx, ps)
		return p, ps, err
	case ferry.PointLatestProcessed, "":
		p, err := s.j.LatestPoint(ctx, vm)
		return p, journal.ProcessStats{}, err
	case ferry.PointLatestApp:
		pts, err := s.j.Points(ctx, vm)
		if err != nil {
			return ferry.Point{}, journal.ProcessStats{}, err
		}
		for i := len(pts) - 1; i >= 0; i-- {
			if pts[i].Consistency == ferry.App {
				return pts[i], journal.ProcessStats{}, nil
			}
		}
		return ferry.Point{}, journal.ProcessStats{}, fmt.Errorf("vm %s: %w: no app-consistent point", vm, journal.ErrNoPoint)
	}
	id, err := strconv.ParseUint(opt, 10, 64)
	if err != nil {
		return ferry.Point{}, journal.ProcessStats{}, fmt.Errorf("%w: point %q: want latest, latest-processed, latest-app or a point ID", ErrInvalidRequest, opt)
	}
	p, err := s.j.Point(ctx, vm, ferry.Seq(id))
	return p, journal.ProcessStats{}, err
}

// process turns received markers into points up to upTo.
func (s *Server) process(ctx context.Context, vm ferry.VMID, upTo ferry.Seq) (journal.ProcessStats, error) {
	ps, err := s.j.Process(ctx, vm, upTo)
	s.charge(ctx, ps)
	return ps, err
}

// CostModel charges modeled time for work a drill does not really wait
// for. The simulator injects it with its virtual clock; a real server has
// none, and its work takes the time it takes.
type CostModel interface {
	// Process is how long verifying n bytes of received data takes, and
	// how the report names that time ("modeled at 20 MiB/s").
	Process(n int64) (time.Duration, string)
}

// charge spends the modeled time of processing on the job's clock, so a
// drill's jobs show it.
func (s *Server) charge(ctx context.Context, ps journal.ProcessStats) {
	if s.cfg.Cost != nil && ps.Bytes > 0 {
		took, _ := s.cfg.Cost.Process(ps.Bytes)
		clock.From(ctx, s.clock).Sleep(ctx, took)
	}
}

// modeled says that processing's time was modeled, and how.
func (s *Server) modeled(ps journal.ProcessStats) string {
	if s.cfg.Cost == nil || ps.Bytes == 0 {
		return ""
	}
	_, how := s.cfg.Cost.Process(ps.Bytes)
	return "; its time " + how
}

// ProcessAll processes every VM's received data into recovery points.
// Retention and the RPO check follow.
func (s *Server) ProcessAll(ctx context.Context) error {
	err := s.j.ProcessAll(ctx, func(ps journal.ProcessStats) { s.charge(ctx, ps) })
	return errors.Join(err, s.applyRetention(ctx), s.checkRPO(ctx), s.checkHealth(ctx))
}
