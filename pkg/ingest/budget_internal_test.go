package ingest

import (
	"context"
	"testing"
	"time"
)

// TestBudget: a batch waits while the streams' batches in flight fill the
// budget and goes on when one is released; a batch larger than the whole
// budget goes through alone; a waiting stream that ends stops waiting; a
// share is given back once however often it is released.
func TestBudget(t *testing.T) {
	ctx := context.Background()
	b := newBudget(10)
	if err := b.acquire(ctx, 6); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { got <- b.acquire(ctx, 5) }()
	select {
	case err := <-got:
		t.Fatalf("11 of 10 bytes admitted (%v)", err)
	case <-time.After(50 * time.Millisecond):
	}
	h := &held{b: b, n: 6}
	h.release()
	h.release() // a second release gives nothing back
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if b.used != 5 {
		t.Fatalf("used %d after a double release, want 5", b.used)
	}
	// Alone, a batch larger than the budget is admitted.
	b.release(5)
	if err := b.acquire(ctx, 50); err != nil || b.used != 50 {
		t.Fatalf("an oversized batch on an idle budget: %v, used %d", err, b.used)
	}
	// A stream that ends stops waiting.
	cctx, cancel := context.WithCancel(ctx)
	go func() { got <- b.acquire(cctx, 1) }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-got; err == nil {
		t.Fatal("acquire went on after its stream ended")
	}
	if b.used != 50 {
		t.Fatalf("a cancelled acquire took %d bytes", b.used-50)
	}
	var nilHeld *held
	nilHeld.release() // a job that never held a share
}
