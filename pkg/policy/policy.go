// Package policy holds what both of Ferry's receivers apply to the points
// they keep: the replication policy type, the failback policy (defined here
// once: the process server lists it and reverse-replicating agents follow
// it; the master target applies it), retention (app-consistent points
// thinned to the policy's frequency, points past the window deleted and
// their records folded into the VM's base) and the RPO alert.
package policy

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/events"
	"github.com/ferrydr/ferry/pkg/journal"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// Policy is a named replication policy: which recovery points Ferry keeps
// and cuts for the VMs that follow it, and when it alerts.
type Policy struct {
	Name string `json:"name"`
	// Retention: points older than this are deleted.
	Retention time.Duration `json:"retention"`
	// CrashInterval: the agent cuts a crash-consistent point this often.
	CrashInterval time.Duration `json:"crash_interval"`
	// AppInterval: the agent cuts an app-consistent point this often; 0
	// disables app-consistent points. App points closer together than
	// this are kept as crash-consistent.
	AppInterval time.Duration `json:"app_interval"`
	// RPOThreshold raises an alert for a VM whose newest point is older.
	RPOThreshold time.Duration `json:"rpo_threshold"`
	// Builtin policies are Ferry's own and cannot be edited.
	Builtin bool `json:"builtin,omitempty"`
}

// FailbackName is the failback policy's name.
const FailbackName = "failback"

// Failback is the policy of reverse replication, as the seed gives it: RPO
// threshold 15 minutes, points kept 24 hours, an app-consistent point every
// 60 minutes (crash-consistent every 5). Nobody can edit it.
func Failback() Policy {
	return Policy{Name: FailbackName, Retention: 24 * time.Hour, CrashInterval: 5 * time.Minute, AppInterval: time.Hour,
		RPOThreshold: 15 * time.Minute, Builtin: true}
}

// Proto converts a policy for the wire; vms are the VMs that follow it.
func (p Policy) Proto(vms []string) *ferryv1.Policy {
	return &ferryv1.Policy{Name: p.Name, RetentionSeconds: int64(p.Retention / time.Second), CrashIntervalSeconds: int64(p.CrashInterval / time.Second),
		AppIntervalSeconds: int64(p.AppInterval / time.Second), RpoThresholdSeconds: int64(p.RPOThreshold / time.Second), Builtin: p.Builtin, Vms: vms}
}

// FromProto converts a policy from the wire.
func FromProto(p *ferryv1.Policy) Policy {
	return Policy{Name: p.GetName(), Retention: time.Duration(p.GetRetentionSeconds()) * time.Second,
		CrashInterval: time.Duration(p.GetCrashIntervalSeconds()) * time.Second, AppInterval: time.Duration(p.GetAppIntervalSeconds()) * time.Second,
		RPOThreshold: time.Duration(p.GetRpoThresholdSeconds()) * time.Second}
}

// GroupTagPrefix starts the tags of multi-VM points, which follow their
// group's frequency rather than the policy's.
const GroupTagPrefix = "group/"

// ThinAppPoints keeps app-consistent points only as often as p says: an
// app point closer than AppInterval to the previous one kept (or any, when
// the policy has them off) is kept as crash-consistent. It returns how
// many it demoted.
func ThinAppPoints(ctx context.Context, j *journal.Journal, vm ferry.VMID, p Policy) (int, error) {
	pts, err := j.Points(ctx, vm)
	if err != nil {
		return 0, err
	}
	var last time.Time
	var demote []ferry.Seq
	for _, pt := range pts {
		if pt.Consistency != ferry.App || strings.HasPrefix(pt.Tag, GroupTagPrefix) {
			continue
		}
		if p.AppInterval == 0 || (!last.IsZero() && pt.Time.Sub(last) < p.AppInterval) {
			demote = append(demote, pt.ID)
			continue
		}
		last = pt.Time
	}
	if len(demote) == 0 {
		return 0, nil
	}
	return len(demote), j.SetConsistency(ctx, vm, demote, ferry.Crash)
}

// Retain deletes vm's points older than p's retention window at now and
// folds the records before the oldest kept point into base (one device per
// disk: the process server's base images, the master target's primary or
// alternate disks), so that the journal stays bounded under steady churn.
// Zero stats: nothing was old enough.
func Retain(ctx context.Context, j *journal.Journal, vm ferry.VMID, p Policy, now time.Time, base func() ([]blockdev.Device, error)) (journal.TrimStats, error) {
	upTo, err := j.RetainFrom(ctx, vm, now.Add(-p.Retention))
	if err != nil || upTo == 0 {
		return journal.TrimStats{}, err
	}
	devs, err := base()
	if err != nil {
		return journal.TrimStats{}, err
	}
	return j.Trim(ctx, vm, upTo, devs)
}

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
