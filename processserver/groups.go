package processserver

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/group"
)

// Group is a replication group: VMs whose agents cut common multi-VM
// points, so that they fail over together at one instant.
type Group struct {
	Name string   `json:"name"`
	VMs  []string `json:"vms"`
	// CrashInterval and AppInterval: how often the group cuts crash- and
	// app-consistent multi-VM points; 0 takes the first VM's policy.
	CrashInterval time.Duration `json:"crash_interval,omitempty"`
	AppInterval   time.Duration `json:"app_interval,omitempty"`
	// HoldTimeout bounds how long a member's writes are held (default 2s).
	HoldTimeout time.Duration `json:"hold_timeout,omitempty"`
}

// Replication group limits.
const (
	MaxGroupVMs        = 16
	defaultHoldTimeout = 2 * time.Second
)

// Validate reports what is wrong with the group's definition.
func (g Group) Validate() error {
	switch {
	case !ferry.ValidDefinitionName(g.Name):
		return fmt.Errorf("%w: group name %q: use 1-63 letters, digits, '.', '_' or '-'", ErrInvalidRequest, g.Name)
	case len(g.VMs) < 2 || len(g.VMs) > MaxGroupVMs:
		return fmt.Errorf("%w: group %s: %d VMs; a replication group has 2 to %d", ErrInvalidRequest, g.Name, len(g.VMs), MaxGroupVMs)
	case g.CrashInterval < 0 || (g.CrashInterval != 0 && g.CrashInterval < time.Second):
		return fmt.Errorf("%w: group %s: crash-consistent frequency %v is below 1s", ErrInvalidRequest, g.Name, g.CrashInterval)
	case g.AppInterval < 0 || (g.AppInterval != 0 && g.AppInterval < time.Second):
		return fmt.Errorf("%w: group %s: app-consistent frequency %v is below 1s", ErrInvalidRequest, g.Name, g.AppInterval)
	case g.HoldTimeout < 0 || g.HoldTimeout > 30*time.Second:
		return fmt.Errorf("%w: group %s: hold timeout %v is outside 0..30s", ErrInvalidRequest, g.Name, g.HoldTimeout)
	}
	seen := map[string]bool{}
	for _, vm := range g.VMs {
		if seen[vm] {
			return fmt.Errorf("%w: group %s names vm %s twice", ErrInvalidRequest, g.Name, vm)
		}
		seen[vm] = true
	}
	return nil
}

func (g Group) holdTimeout() time.Duration {
	if g.HoldTimeout > 0 {
		return g.HoldTimeout
	}
	return defaultHoldTimeout
}

// Groups returns every replication group, by name.
func (s *Server) Groups() ([]Group, error) { return listNamed[Group](s.ctl, bucketGroups) }

// Group returns the replication group of that name.
func (s *Server) Group(name string) (Group, error) {
	return getNamed[Group](s.ctl, bucketGroups, "replication group", name)
}

// groupOf returns the group vm belongs to, if any.
func (s *Server) groupOf(vm string) (Group, bool, error) {
	groups, err := s.Groups()
	if err != nil {
		return Group{}, false, err
	}
	for _, g := range groups {
		if slices.Contains(g.VMs, vm) {
			return g, true, nil
		}
	}
	return Group{}, false, nil
}

// PutGroup creates or changes a replication group. Every VM must be
// replicating to this server and in no other group.
func (s *Server) PutGroup(ctx context.Context, g Group) error {
	if err := g.Validate(); err != nil {
		return err
	}
	for _, vm := range g.VMs {
		if _, err := s.j.VM(ctx, ferry.VMID(vm)); err != nil {
			return fmt.Errorf("%w: group %s: %w", ErrInvalidRequest, g.Name, err)
		}
		if other, ok, err := s.groupOf(vm); err != nil {
			return err
		} else if ok && other.Name != g.Name {
			return fmt.Errorf("%w: vm %s is already in replication group %s", ErrInvalidRequest, vm, other.Name)
		}
	}
	if err := putNamed(s.ctl, bucketGroups, g.Name, g); err != nil {
		return err
	}
	s.log.Info("replication group saved", "group", g.Name, "vms", g.VMs)
	return nil
}

// DeleteGroup removes a replication group; its VMs' points stay.
func (s *Server) DeleteGroup(ctx context.Context, name string) error {
	if _, err := s.Group(name); err != nil {
		return err
	}
	return s.ctl.deleteNamed(bucketGroups, name)
}

// GroupPointResult says how a multi-VM point went.
type GroupPointResult struct {
	Tag string
	// MaxHold is the longest any member held its writes.
	MaxHold time.Duration
	VMs     []string
}

// GroupPoint cuts a multi-VM point of the group: every member's agent
// holds its machine's writes (after quiescing the application for an
// app-consistent point); once all hold, each cuts the group's marker and
// lets writes go on. No member's point then contains a write issued after
// another member's marker. If a member cannot hold in time, every member
// lets go without a marker and the failure is an event.
func (s *Server) GroupPoint(ctx context.Context, name string, app bool) (GroupPointResult, error) {
	g, err := s.Group(name)
	if err != nil {
		return GroupPointResult{}, err
	}
	if reverse, err := s.replicatingBack(g); err != nil || reverse {
		if err != nil {
			return GroupPointResult{}, err
		}
		// The members replicate to the master target: it cuts the point.
		res, err := s.mt.groupPoint(ctx, name, g.VMs, app, g.holdTimeout())
		if err != nil {
			s.event(Event{Time: s.clock.Now(), VM: strings.Join(g.VMs, ","), Kind: EventGroupPointFailed,
				Detail: fmt.Sprintf("group %s: multi-VM point at the master target not cut: %v", name, err)})
			return GroupPointResult{}, fmt.Errorf("group %s at the master target: %w", name, err)
		}
		return res, nil
	}
	s.groupMu.Lock()
	l, ok := s.groupLocks[name]
	if !ok {
		l = &sync.Mutex{}
		s.groupLocks[name] = l
	}
	s.groupMu.Unlock()
	l.Lock()
	defer l.Unlock()

	n, err := s.ctl.nextGroupPoint()
	if err != nil {
		return GroupPointResult{}, err
	}
	res := GroupPointResult{Tag: group.Tag(name, n), VMs: g.VMs}
	kind := "crash"
	if app {
		kind = "app"
	}
	fail := func(err error) (GroupPointResult, error) {
		s.groupPoints.WithLabelValues(name, kind, "failed").Inc()
		s.log.Warn("multi-VM point not cut", "group", name, "tag", res.Tag, "err", err)
		s.event(Event{Time: s.clock.Now(), VM: strings.Join(g.VMs, ","), Kind: EventGroupPointFailed,
			Detail: fmt.Sprintf("group %s: %s multi-VM point %s not cut: %v", name, kind, res.Tag, err)})
		return res, fmt.Errorf("group %s: %w", name, err)
	}

	holds, err := group.Cut(ctx, s.recv, res.Tag, g.VMs, app, g.holdTimeout())
	for _, d := range holds {
		res.MaxHold = max(res.MaxHold, d)
		s.groupHold.Observe(d.Seconds())
	}
	if err != nil {
		return fail(err)
	}
	s.groupPoints.WithLabelValues(name, kind, "ok").Inc()
	s.log.Info("multi-VM point cut", "group", name, "tag", res.Tag, "app", app, "max_hold", res.MaxHold)
	return res, nil
}

// replicatingBack reports whether every member of g replicates to the
// master target now (reprotected); members in different directions are an
// error: no point can be common to them.
func (s *Server) replicatingBack(g Group) (bool, error) {
	back := 0
	for _, vm := range g.VMs {
		st, err := s.ctl.state(vm)
		if err != nil {
			return false, err
		}
		if st.State == StateReprotected {
			back++
		}
	}
	switch {
	case back == 0:
		return false, nil
	case back < len(g.VMs) || s.mt == nil:
		return false, fmt.Errorf("%w: group %s: only %d of its %d VMs replicate back to the master target: no multi-VM point can be common to them", ErrState, g.Name, back, len(g.VMs))
	}
	return true, nil
}

// commonPoints returns, for every member of g, its processed point of the
// newest multi-VM marker that every member has as a point (app-consistent
// on every member when app is set).
func (s *Server) commonPoints(ctx context.Context, g Group, app bool) (map[string]ferry.Point, error) {
	return group.Common(ctx, s.j, g.Name, g.VMs, app)
}

// scheduleGroups cuts each group's multi-VM points at its frequencies.
func (s *Server) scheduleGroups(ctx context.Context) {
	groups, err := s.Groups()
	if err != nil {
		s.log.Error("replication groups", "err", err)
		return
	}
	now := s.clock.Now()
	for _, g := range groups {
		crash, app := g.CrashInterval, g.AppInterval
		if crash == 0 || app == 0 {
			if p, err := s.policyFor(g.VMs[0]); err == nil {
				crash, app = cmp.Or(crash, p.CrashInterval), cmp.Or(app, p.AppInterval)
			}
		}
		for _, k := range []struct {
			app   bool
			every time.Duration
		}{{false, crash}, {true, app}} {
			key := g.Name + "/" + strconv.FormatBool(k.app)
			s.groupMu.Lock()
			last, busy := s.groupLast[key], s.groupBusy[key]
			if last.IsZero() {
				s.groupLast[key], last = now, now
			}
			due := k.every > 0 && !busy && now.Sub(last) >= k.every
			if due {
				s.groupLast[key], s.groupBusy[key] = now, true
			}
			s.groupMu.Unlock()
			if !due {
				continue
			}
			s.wg.Add(1) // Close waits for the point being cut
			go func() {
				defer s.wg.Done()
				defer func() { s.groupMu.Lock(); delete(s.groupBusy, key); s.groupMu.Unlock() }()
				s.GroupPoint(ctx, g.Name, k.app)
			}()
		}
	}
}

// EventGroupPointFailed: a replication group's multi-VM point was not cut.
const EventGroupPointFailed = "group-point-failed"

type groupMetrics struct {
	groupPoints *prometheus.CounterVec
	groupHold   prometheus.Histogram
}

func newGroupMetrics(reg prometheus.Registerer) groupMetrics {
	m := groupMetrics{
		groupPoints: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_ps_group_points_total",
			Help: "Multi-VM points asked of replication groups, by outcome."}, []string{"group", "consistency", "outcome"}),
		groupHold: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_ps_group_hold_seconds",
			Help:    "How long each member of a replication group held its writes for a multi-VM point.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}),
	}
	if reg != nil {
		reg.MustRegister(m.groupPoints, m.groupHold)
	}
	return m
}
