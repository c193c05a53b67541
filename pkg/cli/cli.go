// Package cli holds what Ferry's binaries and reports share: the command
// tree's conventions (help, --version, exit codes), settings files and the
// environment, logging, signal handling, flag helpers and formatting for
// people.
package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// Logger returns a logger on stderr at the named level, as text or as
// JSON (one object per line). A warning or error identical to one logged
// within the last minute (same level, message and attributes) is held
// back; the next one let through says how many were (repeated=N).
func Logger(level, format string) (*slog.Logger, error) {
	if level == "off" {
		return slog.New(slog.DiscardHandler), nil
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, Usagef("log-level: %q is not debug, info, warn, error or off", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	var h slog.Handler
	switch format {
	case "text", "":
		h = slog.NewTextHandler(os.Stderr, opts)
	case "json":
		h = slog.NewJSONHandler(os.Stderr, opts)
	default:
		return nil, Usagef("log-format: %q is not text or json", format)
	}
	return slog.New(NewQuietRepeats(h, time.Minute, time.Now)), nil
}

// SignalContext is cancelled on SIGTERM or SIGINT.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}

// Repeated is a flag that may be given several times.
type Repeated []string

func (r *Repeated) String() string     { return strings.Join(*r, ",") }
func (r *Repeated) Set(v string) error { *r = append(*r, v); return nil }
func (r *Repeated) Type() string       { return "strings" }

// Append, Replace and GetSlice let a settings file or the environment set
// the whole list (pflag.SliceValue).
func (r *Repeated) Append(v string) error     { return r.Set(v) }
func (r *Repeated) Replace(vs []string) error { *r = append((*r)[:0], vs...); return nil }
func (r *Repeated) GetSlice() []string        { return *r }

// Bytes formats a byte count for people: 512 B, 1.5 KiB, 3.2 MiB, 1.0 GiB.
func Bytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
