package ingest

import (
	"context"
	"sync"
)

// budget bounds the batch bytes all streams together hold between receipt
// and commit, so that the receiver's memory does not grow with the number
// of agents. A batch larger than the whole budget is let through alone.
type budget struct {
	mu      sync.Mutex
	used    int64
	max     int64
	changed chan struct{} // closed and replaced on every release
}

func newBudget(max int64) *budget { return &budget{max: max, changed: make(chan struct{})} }

// acquire waits until n bytes fit, or ctx ends.
func (b *budget) acquire(ctx context.Context, n int64) error {
	for {
		b.mu.Lock()
		if b.used == 0 || b.used+n <= b.max {
			b.used += n
			b.mu.Unlock()
			return nil
		}
		ch := b.changed
		b.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (b *budget) release(n int64) {
	b.mu.Lock()
	b.used -= n
	close(b.changed)
	b.changed = make(chan struct{})
	b.mu.Unlock()
}

// held is a batch's share of the budget, given back once.
type held struct {
	once sync.Once
	b    *budget
	n    int64
}

func (h *held) release() {
	if h == nil {
		return
	}
	h.once.Do(func() { h.b.release(h.n) })
}
