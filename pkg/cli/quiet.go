package cli

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// QuietRepeats is a slog handler that holds back a warning or error
// identical to one it let through within the window (an unreachable
// server retried every 2 s would otherwise fill the log); the next one let
// through carries repeated=N, the number held back. Lower levels pass.
type QuietRepeats struct {
	next   slog.Handler
	window time.Duration
	now    func() time.Time
	// scope tells apart loggers derived with With or WithGroup; they share
	// one state.
	scope string
	state *quietState
}

type quietState struct {
	mu   sync.Mutex
	seen map[string]*quietEntry
}

type quietEntry struct {
	last time.Time // when one was let through
	held int
}

// NewQuietRepeats wraps next.
func NewQuietRepeats(next slog.Handler, window time.Duration, now func() time.Time) *QuietRepeats {
	return &QuietRepeats{next: next, window: window, now: now, state: &quietState{seen: map[string]*quietEntry{}}}
}

func (q *QuietRepeats) Enabled(ctx context.Context, l slog.Level) bool { return q.next.Enabled(ctx, l) }

func (q *QuietRepeats) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return q.next.Handle(ctx, r)
	}
	var key strings.Builder
	fmt.Fprintf(&key, "%s\x00%s\x00%s", q.scope, r.Level, r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&key, "\x00%s=%v", a.Key, a.Value)
		return true
	})
	now := q.now()
	st := q.state
	st.mu.Lock()
	e := st.seen[key.String()]
	if e != nil && now.Sub(e.last) < q.window {
		e.held++
		st.mu.Unlock()
		return nil
	}
	held := 0
	if e != nil {
		held = e.held
	}
	if len(st.seen) >= 4096 {
		// Bounded: forget everything older than the window.
		for k, old := range st.seen {
			if now.Sub(old.last) >= q.window {
				delete(st.seen, k)
			}
		}
	}
	st.seen[key.String()] = &quietEntry{last: now}
	st.mu.Unlock()
	if held > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("repeated", held))
	}
	return q.next.Handle(ctx, r)
}

func (q *QuietRepeats) WithAttrs(attrs []slog.Attr) slog.Handler {
	scope := q.scope
	for _, a := range attrs {
		scope += fmt.Sprintf("\x01%s=%v", a.Key, a.Value)
	}
	return &QuietRepeats{next: q.next.WithAttrs(attrs), window: q.window, now: q.now, scope: scope, state: q.state}
}

func (q *QuietRepeats) WithGroup(name string) slog.Handler {
	return &QuietRepeats{next: q.next.WithGroup(name), window: q.window, now: q.now, scope: q.scope + "\x02" + name, state: q.state}
}
