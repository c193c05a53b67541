package clock

import (
	"context"
	"testing"
	"time"
)

// TestTimeline: a timeline's sleeps move only its own time, side-by-side
// timelines do not see each other's, and the clock itself stands still
// until someone advances it.
func TestTimeline(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	v := NewVirtual(start)
	ctx := context.Background()
	a, ta := WithTimeline(ctx, v)
	b, tb := WithTimeline(ctx, v)
	From(a, v).Sleep(a, 9*time.Minute)
	From(b, v).Sleep(b, time.Minute)
	if got := From(a, v).Now().Sub(start); got != 9*time.Minute {
		t.Fatalf("timeline a at +%v, want +9m", got)
	}
	if got := From(b, v).Now().Sub(start); got != time.Minute {
		t.Fatalf("timeline b at +%v, want +1m", got)
	}
	if v.Now() != start || ta.Elapsed() != 9*time.Minute || tb.Elapsed() != time.Minute {
		t.Fatalf("clock %v, elapsed %v %v", v.Now(), ta.Elapsed(), tb.Elapsed())
	}
	v.Advance(time.Hour)
	if got := From(b, v).Now().Sub(start); got != time.Hour+time.Minute {
		t.Fatalf("timeline b after the clock moved: +%v", got)
	}
	if From(ctx, v) != Clock(v) {
		t.Fatal("a context without a timeline does not give the clock")
	}
	if rctx, tl := WithTimeline(ctx, Real{}); tl != nil || From(rctx, Real{}) != Clock(Real{}) {
		t.Fatal("real time got a timeline")
	}
}

// TestVirtualNeverBack: a virtual clock and a timeline never go back, and
// a sleep on an ended context moves nothing.
func TestVirtualNeverBack(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	v := NewVirtual(start)
	v.Advance(-time.Hour)
	ctx, tl := WithTimeline(context.Background(), v)
	tl.Sleep(ctx, -time.Hour)
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if err := v.Sleep(done, time.Hour); err == nil {
		t.Fatal("a sleep on an ended context succeeded")
	}
	if err := tl.Sleep(done, time.Hour); err == nil {
		t.Fatal("a timeline's sleep on an ended context succeeded")
	}
	if v.Now() != start || tl.Now() != start {
		t.Fatalf("clock %v, timeline %v, want both at %v", v.Now(), tl.Now(), start)
	}
	if _, ok := Or(nil).(Real); !ok || Or(v) != Clock(v) {
		t.Fatal("Or")
	}
}
