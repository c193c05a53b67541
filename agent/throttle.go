package agent

import (
	"context"
	"sync"
	"time"
)

// throttle bounds the bytes sent per second (--max-bandwidth) with a token
// bucket: up to half a second's worth may go at once after a pause, and a
// batch larger than what is in the bucket runs it into debt that later
// sends wait out. A nil throttle, or a rate of 0, lets everything through.
type throttle struct {
	rate   float64 // bytes per second
	burst  float64
	mu     sync.Mutex
	tokens float64
	last   time.Time
	now    func() time.Time
	// waited counts the time sends were held (the metric).
	waited func(time.Duration)
}

func newThrottle(rate int64, waited func(time.Duration)) *throttle {
	if rate <= 0 {
		return nil
	}
	b := float64(rate) / 2
	return &throttle{rate: float64(rate), burst: b, tokens: b, last: time.Now(), now: time.Now, waited: waited}
}

// delay takes n bytes from the bucket and returns how long the send must
// wait for them.
func (t *throttle) delay(n int64) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	t.tokens = min(t.burst, t.tokens+now.Sub(t.last).Seconds()*t.rate)
	t.last = now
	t.tokens -= float64(n)
	if t.tokens >= 0 {
		return 0
	}
	return time.Duration(-t.tokens / t.rate * float64(time.Second))
}

// wait holds a send of n bytes until the rate allows it.
func (t *throttle) wait(ctx context.Context, n int64) error {
	if t == nil {
		return nil
	}
	d := t.delay(n)
	if d <= 0 {
		return nil
	}
	if t.waited != nil {
		t.waited(d)
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
