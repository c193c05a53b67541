package cli

import (
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"testing"
	"time"
)

// TestDescribe: the version line from build information and link-time
// values.
func TestDescribe(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "true"}}}
	for _, c := range []struct {
		bi              *debug.BuildInfo
		version, commit string
		want            string
	}{
		{bi, "", "", "v1.2.3 (commit abc123+modified, go1.26.8)"},
		{&debug.BuildInfo{GoVersion: "go1.26.8", Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}, {Key: "vcs.modified", Value: "false"}}}, "", "", "(devel) (commit abc, go1.26.8)"},
		{bi, "0.1.0", "def456", "0.1.0 (commit def456, go1.26.8)"},
		{nil, "", "", "(devel) (commit unknown, unknown)"},
	} {
		if got := describe(c.bi, c.version, c.commit); got != c.want {
			t.Errorf("describe(%v, %q, %q) = %q, want %q", c.bi != nil, c.version, c.commit, got, c.want)
		}
	}
}

// TestQuietRepeatsBounds: at exactly the window a repeat is let through;
// the memory of what was logged is bounded: past 4096 entries those older
// than the window are forgotten.
func TestQuietRepeatsBounds(t *testing.T) {
	now := time.Unix(0, 0)
	q := NewQuietRepeats(slog.NewTextHandler(io.Discard, nil), time.Minute, func() time.Time { return now })
	log := slog.New(q)
	log.Warn("same")
	now = now.Add(time.Minute - time.Nanosecond)
	log.Warn("same") // held
	if e := q.state.seen[fmt.Sprintf("\x00%s\x00same", slog.LevelWarn)]; e == nil || e.held != 1 {
		t.Fatalf("a repeat within the window was not held: %+v", e)
	}
	now = now.Add(time.Nanosecond)
	log.Warn("same") // exactly the window since it was let through: let through
	if e := q.state.seen[fmt.Sprintf("\x00%s\x00same", slog.LevelWarn)]; e == nil || e.held != 0 || !e.last.Equal(now) {
		t.Fatalf("a repeat at the window's end was held: %+v", e)
	}
	// Full (4096 entries): those at least a window old are forgotten, the
	// younger kept.
	for _, c := range []struct {
		age  time.Duration
		want int
	}{{30 * time.Second, 4097}, {time.Minute, 1}, {75 * time.Second, 1}} {
		q := NewQuietRepeats(slog.NewTextHandler(io.Discard, nil), time.Minute, func() time.Time { return now })
		log := slog.New(q)
		for i := range 4096 {
			log.Warn(fmt.Sprint("distinct ", i))
		}
		now = now.Add(c.age)
		log.Warn("one more")
		if n := len(q.state.seen); n != c.want {
			t.Errorf("full, entries %v old: %d after one more, want %d", c.age, n, c.want)
		}
	}
}

// TestBytes: byte counts for people.
func TestBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 1<<20 - 1: "1024.0 KiB",
		1 << 20: "1.0 MiB", 3<<20 + 1<<19: "3.5 MiB", 1 << 30: "1.0 GiB", 5 << 40: "5120.0 GiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}
