package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferrydr/ferry/pkg/cbt"
	"github.com/ferrydr/ferry/pkg/clock"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// groupHold is a replication group barrier holding the machine's writes.
type groupHold struct {
	tag     string
	app     bool
	start   time.Time
	timer   *time.Timer
	expired bool
}

// holdGroup is phase one of a group marker: quiesce the application when
// app is set, then hold every new write. The hold ends with cutGroup, or by
// itself after timeout, whichever comes first.
func (a *Agent) holdGroup(ctx context.Context, h *ferryv1.GroupHold) error {
	if h.GetTag() == "" {
		return errors.New("group hold: no tag")
	}
	if a.cfg.Mode != ModeSplitter {
		return errors.New("group hold: a scan-mode agent cannot hold the machine's writes")
	}
	timeout := a.cfg.GroupHoldTimeout
	if t := time.Duration(h.GetTimeoutMillis()) * time.Millisecond; t > 0 && t < timeout {
		timeout = t
	}
	a.holdMu.Lock()
	defer a.holdMu.Unlock()
	if a.hold != nil && !a.hold.expired {
		return fmt.Errorf("group hold %s: the barrier of %s still holds", h.GetTag(), a.hold.tag)
	}
	if st := a.tr.Stats(); st.Mode != cbt.ModeQueue {
		return errors.New("group hold: the agent is draining its bitmap; no point can be cut now")
	}
	if h.GetApp() {
		if err := a.freeze(ctx); err != nil {
			a.m.quiesceFailures.Inc()
			a.log.Warn("group app-consistent point not cut", "tag", h.GetTag(), "err", err)
			return fmt.Errorf("%w: %w", ErrQuiesce, err)
		}
	}
	a.tr.Hold()
	g := &groupHold{tag: h.GetTag(), app: h.GetApp(), start: time.Now()}
	a.hold = g
	if a.cfg.OnGroupHold != nil {
		a.cfg.OnGroupHold(g.tag)
	}
	g.timer = time.AfterFunc(timeout, func() {
		a.holdMu.Lock()
		defer a.holdMu.Unlock()
		if a.hold == g && !g.expired {
			a.log.Warn("group barrier expired; writes go on without its marker", "tag", g.tag, "after", timeout)
			a.endHold(g, true)
		}
	})
	return nil
}

// cutGroup is phase two: queue the group's marker behind everything
// written before the hold (unless abort), let writes go on, thaw the
// application. It returns how long writes were held.
func (a *Agent) cutGroup(c *ferryv1.GroupCut) (time.Duration, error) {
	a.holdMu.Lock()
	defer a.holdMu.Unlock()
	g := a.hold
	if g == nil || g.tag != c.GetTag() {
		return 0, fmt.Errorf("group cut %s: no barrier of that tag holds", c.GetTag())
	}
	if g.expired {
		a.hold = nil
		return 0, fmt.Errorf("group cut %s: the barrier expired before the cut; writes went on", c.GetTag())
	}
	g.timer.Stop()
	var err error
	if !c.GetAbort() && !a.tr.Mark(cbt.MarkRequest{App: g.app, Tag: g.tag, Time: a.cfg.Clock.Now()}) {
		err = fmt.Errorf("group cut %s: the change queue is full; no point cut", g.tag)
	}
	held := a.endHold(g, false)
	a.hold = nil
	return held, err
}

// endHold lets writes go on and thaws the application; holdMu is held.
func (a *Agent) endHold(g *groupHold, expired bool) time.Duration {
	a.tr.Release()
	held := time.Since(g.start)
	g.expired = expired
	a.m.groupHold.Observe(held.Seconds())
	if g.app && a.cfg.Thaw != nil {
		if err := a.cfg.Thaw(a.ctx); err != nil {
			a.log.Warn("thaw after group marker", "tag", g.tag, "err", err)
		}
	}
	return held
}

// freeze runs the freeze hook bounded by QuiesceTimeout.
func (a *Agent) freeze(ctx context.Context) error {
	if a.cfg.Freeze == nil {
		return errors.New("no freeze hook is configured")
	}
	fctx, cancel := context.WithTimeout(ctx, a.cfg.QuiesceTimeout)
	defer cancel()
	err := a.cfg.Freeze(fctx)
	if err == nil && fctx.Err() != nil {
		err = fctx.Err()
	}
	if err != nil && a.cfg.Thaw != nil {
		a.cfg.Thaw(ctx)
	}
	return err
}

// Policy is the replication policy the receiver last sent (nil before
// the first hello was answered).
func (a *Agent) Policy() *ferryv1.Policy { return a.policy.Load() }

// setPolicy follows the receiver's replication policy.
func (a *Agent) setPolicy(p *ferryv1.Policy) {
	if p == nil {
		return
	}
	a.policy.Store(p)
	if a.cfg.IgnorePolicy {
		return
	}
	crash := time.Duration(p.GetCrashIntervalSeconds()) * time.Second
	app := time.Duration(p.GetAppIntervalSeconds()) * time.Second
	noApp := app > 0 && (a.cfg.Freeze == nil || a.cfg.Mode != ModeSplitter)
	if noApp {
		app = 0
	}
	if time.Duration(a.crashEvery.Swap(int64(crash))) == crash && time.Duration(a.appEvery.Swap(int64(app))) == app {
		return
	}
	a.log.Info("following replication policy", "policy", p.GetName(), "crash_interval", crash, "app_interval", app)
	if noApp {
		a.log.Warn("the policy asks for app-consistent points but this agent has no freeze hook (and write splitter); it cuts crash-consistent points only", "policy", p.GetName())
	}
}

// schedulePoints cuts crash- and app-consistent points at the policy's
// frequencies.
func (a *Agent) schedulePoints(ctx context.Context) {
	lastCrash, lastApp := a.cfg.Clock.Now(), a.cfg.Clock.Now()
	clock.Every(ctx, time.Second, func() {
		now := a.cfg.Clock.Now()
		if every := time.Duration(a.crashEvery.Load()); every > 0 && a.cfg.Mode == ModeSplitter && now.Sub(lastCrash) >= every {
			lastCrash = now
			a.Mark(false, "")
		}
		if every := time.Duration(a.appEvery.Load()); every > 0 && now.Sub(lastApp) >= every {
			lastApp = now
			a.MarkApp(ctx, "app")
		}
	})
}

// resyncRanges sends ranges of the disks again: the receiver found its
// copy of them corrupt. The changes queued so far go to the bitmap too, so
// the ranges and everything after them are drained in one pass.
func (a *Agent) resyncRanges(ranges []*ferryv1.Range) error {
	for _, r := range ranges {
		if int(r.GetDisk()) >= len(a.cfg.Disks) || r.GetLength() == 0 || r.GetOffset()+r.GetLength() > uint64(a.cfg.Disks[r.GetDisk()].Device.Size()) {
			return fmt.Errorf("resync: range %d+%d of disk %d is outside the disks", r.GetOffset(), r.GetLength(), r.GetDisk())
		}
	}
	a.tr.EnterBitmap()
	for _, r := range ranges {
		a.tr.MarkDirty(int(r.GetDisk()), int64(r.GetOffset()), int64(r.GetLength()))
	}
	a.log.Warn("the receiver found blocks corrupt; sending them again", "ranges", len(ranges))
	return nil
}
