package agent

import (
	"context"
	"testing"
	"time"
)

// TestThrottle: half a second's worth goes at once; past it each send
// waits for what it takes at the rate; a pause refills the bucket only up
// to half a second's worth; no limit lets everything through.
func TestThrottle(t *testing.T) {
	now := time.Unix(100, 0)
	var held time.Duration
	th := newThrottle(1<<20, func(d time.Duration) { held += d })
	th.now, th.last = func() time.Time { return now }, now
	if d := th.delay(512 << 10); d != 0 {
		t.Fatalf("the first half second's worth waited %v", d)
	}
	if d := th.delay(256 << 10); d != 250*time.Millisecond {
		t.Fatalf("a quarter MiB past the bucket waits %v, want 250ms", d)
	}
	// A second send right away waits for its own share after the debt.
	if d := th.delay(256 << 10); d != 500*time.Millisecond {
		t.Fatalf("the next quarter MiB waits %v, want 500ms", d)
	}
	now = now.Add(10 * time.Second) // a long pause: the bucket is full, not more
	if d := th.delay(512 << 10); d != 0 {
		t.Fatalf("after a pause, half a second's worth waited %v", d)
	}
	if d := th.delay(1 << 20); d != time.Second {
		t.Fatalf("a MiB past a full bucket waits %v, want 1s", d)
	}
	// wait sleeps what delay said and counts it.
	th2 := newThrottle(64<<10, func(d time.Duration) { held += d })
	start := time.Now()
	if err := th2.wait(context.Background(), 32<<10+6<<10); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 90*time.Millisecond || held < 90*time.Millisecond {
		t.Fatalf("6 KiB past the bucket at 64 KiB/s: slept %v, counted %v", el, held)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := th2.wait(ctx, 1<<20); err == nil {
		t.Fatal("a cancelled wait returned no error")
	}
	var none *throttle
	if newThrottle(0, nil) != nil || none.wait(context.Background(), 1<<30) != nil {
		t.Fatal("no limit must let everything through")
	}
}
