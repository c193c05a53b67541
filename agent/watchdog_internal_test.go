package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/blockdev"
)

// TestWatchdog: the session's watchdog takes the stream for stalled only
// while the agent waits for an answer (its hello's, or an acknowledgement
// of records in the window) and has heard nothing for AnswerTimeout: not
// while answers keep coming, not while the agent waits for nothing, and
// never sooner than AnswerTimeout after the wait began. The moments of
// the stream are set here directly.
func TestWatchdog(t *testing.T) {
	const timeout = 200 * time.Millisecond
	a, err := New(Config{VM: "vm1", StateDir: t.TempDir(), Target: "127.0.0.1:1", Logger: ferrytest.Logger(t),
		Disks: []Disk{{Name: "disk0", Device: blockdev.NewMemory(1 << 20)}}})
	if err != nil {
		t.Fatal(err)
	}
	a.cfg.AnswerTimeout = timeout
	watch := func() (context.Context, time.Time) {
		ctx, cancel := context.WithCancelCause(context.Background())
		t.Cleanup(func() { cancel(nil) })
		a.heard.Store(time.Now().UnixNano())
		go a.watchdog(ctx, cancel)
		return ctx, time.Now()
	}
	stalled := func(ctx context.Context, within time.Duration) bool {
		select {
		case <-ctx.Done():
			if !errors.Is(context.Cause(ctx), errStalled) {
				t.Fatalf("ended with %v", context.Cause(ctx))
			}
			return true
		case <-time.After(within):
			return false
		}
	}

	// A hello with no answer.
	a.awaitHello.Store(true)
	ctx, start := watch()
	if !stalled(ctx, 20*timeout) {
		t.Fatal("a hello without an answer was waited for without end")
	}
	if d := time.Since(start); d < timeout {
		t.Fatalf("stalled after %v, before the answer timeout", d)
	}
	a.awaitHello.Store(false)

	// Records in the window, acknowledgements coming: no stall; then
	// none come.
	a.mu.Lock()
	a.window = []*sentBatch{{bytes: 4096, last: 1}}
	a.mu.Unlock()
	ctx, _ = watch()
	for range 30 {
		a.heard.Store(time.Now().UnixNano())
		if stalled(ctx, timeout/5) {
			t.Fatal("stalled while answers kept coming")
		}
	}
	if !stalled(ctx, 20*timeout) {
		t.Fatal("records without an acknowledgement were waited for without end")
	}

	// Nothing awaited (an idle agent hears nothing, rightly): no stall,
	// however long; once records are sent, the timeout counts from then,
	// not from the last answer long ago.
	a.mu.Lock()
	a.window = nil
	a.mu.Unlock()
	ctx, _ = watch()
	if stalled(ctx, 5*timeout) {
		t.Fatal("stalled while the agent waited for nothing")
	}
	a.mu.Lock()
	a.window = []*sentBatch{{bytes: 4096, last: 2}}
	a.mu.Unlock()
	sent := time.Now()
	if !stalled(ctx, 20*timeout) {
		t.Fatal("records without an acknowledgement were waited for without end")
	}
	if d := time.Since(sent); d < timeout-timeout/8 {
		t.Fatalf("stalled %v after the records were sent, before the answer timeout", d)
	}
}
