// Package clock lets Ferry's components run on real time or on the
// simulator's virtual time.
package clock

import (
	"context"
	"sync"
	"time"
)

// Clock tells the time and waits. Implementations are safe for concurrent
// use.
type Clock interface {
	Now() time.Time
	// Sleep waits for d or until ctx ends.
	Sleep(ctx context.Context, d time.Duration) error
	// Simulated reports whether time is virtual: modeled durations (a
	// step that takes minutes on a real machine) are then charged to the
	// clock with Sleep instead of being spent.
	Simulated() bool
}

// Real is the machine's clock.
type Real struct{}

func (Real) Now() time.Time { return time.Now() }

func (Real) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (Real) Simulated() bool { return false }

// Virtual is a simulated clock. Time stands still until Advance moves it or
// a Sleep skips ahead: a sleeper does not wait, it moves the clock by d and
// returns, so a simulated hour passes at once. Concurrent sleepers add up.
type Virtual struct {
	mu  sync.Mutex
	now time.Time
}

// NewVirtual returns a virtual clock set to start.
func NewVirtual(start time.Time) *Virtual { return &Virtual{now: start} }

func (v *Virtual) Now() time.Time {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.now
}

// Sleep moves the clock forward by d.
func (v *Virtual) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	v.Advance(d)
	return nil
}

// Advance moves the clock forward by d (never back).
func (v *Virtual) Advance(d time.Duration) {
	if d <= 0 {
		return
	}
	v.mu.Lock()
	v.now = v.now.Add(d)
	v.mu.Unlock()
}

func (v *Virtual) Simulated() bool { return true }

// Or returns c, or the real clock when c is nil.
func Or(c Clock) Clock {
	if c == nil {
		return Real{}
	}
	return c
}

// Every calls fn every d of real time until ctx ends. Background work
// (marker and scan tickers, processing loops) runs on it; simulations
// drive the same work themselves.
func Every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			fn()
		case <-ctx.Done():
			return
		}
	}
}

// Timeline is one task's own stretch of a simulated clock, for tasks that
// run side by side (the VMs of a recovery plan's group): its sleeps move
// only its own time, so what one task is charged does not show in
// another's durations whatever order their goroutines run in. Its time is
// the clock's plus what it slept. It is safe for concurrent use.
type Timeline struct {
	parent  Clock
	mu      sync.Mutex
	elapsed time.Duration
}

func (t *Timeline) Now() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.parent.Now().Add(t.elapsed)
}

// Sleep moves the timeline forward by d.
func (t *Timeline) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d > 0 {
		t.mu.Lock()
		t.elapsed += d
		t.mu.Unlock()
	}
	return nil
}

func (t *Timeline) Simulated() bool { return true }

// Elapsed is how far the timeline slept ahead of its clock.
func (t *Timeline) Elapsed() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.elapsed
}

type timelineKey struct{}

// WithTimeline gives ctx a timeline of its own on c when c is simulated
// (From then returns it); on real time it returns ctx and a nil timeline.
func WithTimeline(ctx context.Context, c Clock) (context.Context, *Timeline) {
	if c == nil || !c.Simulated() {
		return ctx, nil
	}
	t := &Timeline{parent: From(ctx, c)}
	return context.WithValue(ctx, timelineKey{}, t), t
}

// From returns the timeline ctx carries, or c.
func From(ctx context.Context, c Clock) Clock {
	if t, ok := ctx.Value(timelineKey{}).(*Timeline); ok {
		return t
	}
	return c
}

// Advance moves the timeline forward by d.
func (t *Timeline) Advance(d time.Duration) { t.Sleep(context.Background(), d) }

// Advancer is a clock that can be moved forward.
type Advancer interface{ Advance(time.Duration) }
