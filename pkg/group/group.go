// Package group cuts multi-VM points, the same way wherever a replication
// group's agents stream: at the process server while the group is
// protected, at the master target while it replicates back. The receiver
// is the coordinator: over each member's own stream it asks every agent to
// hold its machine's writes (after quiescing the application for an
// app-consistent point); once all hold, each queues the group's marker
// behind everything written before the hold and lets writes go on.
package group

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/ingest"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// TagPrefix starts the tag of every multi-VM marker: group/NAME/N.
const TagPrefix = ingest.ReservedTagPrefix

// Tag is the tag of group name's n-th multi-VM point.
func Tag(name string, n uint64) string { return fmt.Sprintf("%s%s/%d", TagPrefix, name, n) }

// TagSeq returns N of a tag group/NAME/N of group name.
func TagSeq(tag, name string) (uint64, bool) {
	rest, ok := strings.CutPrefix(tag, TagPrefix+name+"/")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(rest, 10, 64)
	return n, err == nil
}

// Cut runs the two-phase barrier for the marker tag on the agents of vms:
// every member holds (bounded by hold on the agent; the wait also covers a
// freeze for an app point), then every member cuts and lets go. If a
// member cannot hold in time, every member lets go without a marker. It
// returns each member's hold, by VM.
func Cut(ctx context.Context, r *ingest.Receiver, tag string, vms []string, app bool, hold time.Duration) (map[string]time.Duration, error) {
	wait := hold
	if app {
		wait += 15 * time.Second
	}
	hctx, cancel := context.WithTimeout(ctx, wait)
	errs := commandAll(hctx, r, vms, func() *ferryv1.Command { return wire.HoldCommand(tag, app, hold) }, nil)
	cancel()
	if err := joined(errs); err != nil {
		commandAll(ctx, r, vms, func() *ferryv1.Command {
			return wire.CutCommand(tag, true)
		}, nil)
		return nil, fmt.Errorf("barrier not reached: %w", err)
	}
	holds := map[string]time.Duration{}
	var mu sync.Mutex
	errs = commandAll(ctx, r, vms, func() *ferryv1.Command {
		return wire.CutCommand(tag, false)
	}, func(vm string, res *ferryv1.CommandResult) {
		mu.Lock()
		defer mu.Unlock()
		holds[vm] = time.Duration(res.GetHoldNanos())
	})
	if err := joined(errs); err != nil {
		return holds, fmt.Errorf("marker not cut on every member (the point is not common): %w", err)
	}
	return holds, nil
}

// commandAll sends a command (a new one each: the receiver numbers it) to
// the agents of vms in parallel and returns each one's error (nil when it
// answered ok); ok is called with each good answer.
func commandAll(ctx context.Context, r *ingest.Receiver, vms []string, cmd func() *ferryv1.Command, ok func(string, *ferryv1.CommandResult)) []error {
	errs := make([]error, len(vms))
	var wg sync.WaitGroup
	for i, vm := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := r.Command(ctx, ferry.VMID(vm), cmd())
			switch {
			case err != nil && ctx.Err() != nil:
				errs[i] = fmt.Errorf("vm %s: no answer in time: %w", vm, err)
			case err != nil:
				errs[i] = err
			case !res.GetOk():
				errs[i] = fmt.Errorf("vm %s: %s", vm, res.GetError())
			case ok != nil:
				ok(vm, res)
			}
		}()
	}
	wg.Wait()
	return errs
}

// joined joins the errors of commandAll into one, or returns nil.
func joined(errs []error) error {
	var msgs []string
	for _, err := range errs {
		if err != nil {
			msgs = append(msgs, err.Error())
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(msgs, "; "))
}

// Common returns, for every member of group name, its processed point of
// the newest multi-VM marker that every member has as a point
// (app-consistent on every member when app is set).
func Common(ctx context.Context, j *journal.Journal, name string, vms []string, app bool) (map[string]ferry.Point, error) {
	count := map[uint64]int{}
	byVM := map[string]map[uint64]ferry.Point{}
	for _, vm := range vms {
		pts, err := j.Points(ctx, ferry.VMID(vm))
		if err != nil {
			return nil, err
		}
		byVM[vm] = map[uint64]ferry.Point{}
		for _, p := range pts {
			n, ok := TagSeq(p.Tag, name)
			if !ok || (app && p.Consistency != ferry.App) {
				continue
			}
			byVM[vm][n] = p
			count[n]++
		}
	}
	var best uint64
	for n, c := range count {
		if c == len(vms) && n > best {
			best = n
		}
	}
	if best == 0 {
		kind := ""
		if app {
			kind = "app-consistent "
		}
		return nil, fmt.Errorf("group %s: %w: no processed %smulti-VM point common to %s", name, journal.ErrNoPoint, kind, strings.Join(vms, ", "))
	}
	out := map[string]ferry.Point{}
	for _, vm := range vms {
		out[vm] = byVM[vm][best]
	}
	return out, nil
}
