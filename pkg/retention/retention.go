// Package retention decides which recovery points Ferry keeps: the
// replication policy (how long points are kept, how often the agent cuts
// crash- and app-consistent points, when the RPO alerts), its validation,
// the failback policy (defined here once: the process server lists it,
// reverse-replicating agents follow it, the master target applies it), and
// the keep/thin/expire decisions as pure functions over a VM's points
// (the journal applies them).
package retention

import (
	"fmt"
	"strings"
	"time"

	"github.com/ferrydr/ferry"
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

// Built-in policy names.
const (
	// DefaultName is what a VM follows until another policy is attached
	// (24 h retention, as for Hyper-V-style protection).
	DefaultName = "default"
	// VMwareName is attached to VMware-style VMs when they first connect
	// (72 h retention).
	VMwareName = "vmware-72h"
	// FailbackName is what reprotected VMs follow while they replicate to
	// the master target; Ferry creates it and it cannot be edited.
	FailbackName = "failback"
)

// Failback is the policy of reverse replication, as the seed gives it: RPO
// threshold 15 minutes, points kept 24 hours, an app-consistent point every
// 60 minutes (crash-consistent every 5). Nobody can edit it.
func Failback() Policy {
	return Policy{Name: FailbackName, Retention: 24 * time.Hour, CrashInterval: 5 * time.Minute, AppInterval: time.Hour,
		RPOThreshold: 15 * time.Minute, Builtin: true}
}

// Bounds of a policy's values.
const (
	MinRetention    = time.Hour
	MaxRetention    = 35 * 24 * time.Hour
	MinInterval     = time.Second
	MinRPOThreshold = time.Minute
)

// Validate reports the first field of p that is out of range, naming it.
func (p Policy) Validate() error {
	switch {
	case !ferry.ValidDefinitionName(p.Name):
		return fmt.Errorf("policy name %q: use 1-63 letters, digits, '.', '_' or '-'", p.Name)
	case p.Retention < MinRetention || p.Retention > MaxRetention:
		return fmt.Errorf("policy %s: retention %v is outside 1h..840h", p.Name, p.Retention)
	case p.CrashInterval < MinInterval || p.CrashInterval > p.Retention:
		return fmt.Errorf("policy %s: crash-consistent frequency %v is outside 1s..retention (%v)", p.Name, p.CrashInterval, p.Retention)
	case p.AppInterval != 0 && (p.AppInterval < MinInterval || p.AppInterval > p.Retention):
		return fmt.Errorf("policy %s: app-consistent frequency %v is outside 1s..retention (%v); 0 turns app-consistent points off", p.Name, p.AppInterval, p.Retention)
	case p.RPOThreshold < MinRPOThreshold:
		return fmt.Errorf("policy %s: RPO threshold %v is below 1m", p.Name, p.RPOThreshold)
	}
	return nil
}

// GroupTagPrefix starts the tags of multi-VM points, which follow their
// group's frequency rather than the policy's.
const GroupTagPrefix = "group/"

// Expire decides which of a VM's points (oldest first) go at now: those
// older than the retention window. It returns the oldest point kept, which
// the journal is trimmed to, or 0 when nothing goes. The newest point
// always stays: when every point is older than the window, none goes.
func Expire(pts []ferry.Point, p Policy, now time.Time) ferry.Seq {
	cutoff := now.Add(-p.Retention)
	expired := false
	for _, pt := range pts {
		if pt.Time.Before(cutoff) {
			expired = true
			continue
		}
		if expired {
			return pt.ID
		}
		return 0
	}
	return 0
}

// Thin decides which app-consistent points are kept as crash-consistent
// only: an app point closer than AppInterval to the previous one kept (or
// any, when the policy has them off). Multi-VM points follow their group's
// frequency and are left alone.
func Thin(pts []ferry.Point, p Policy) []ferry.Seq {
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
	return demote
}
