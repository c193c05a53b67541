package proc

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Command is a command an operator configured (a hook, a plan action): it
// runs in its own process group with a bound, and what it printed is kept
// for the error and the log.
type Command struct {
	// What names it in errors ("compute hook", `action "switch DNS"`).
	What string
	// Path and Args run a program; Shell (when set) is run by /bin/sh -c.
	Path  string
	Args  []string
	Shell string
	Dir   string
	Env   []string // nil: the server's environment
	// Credential runs it as another user (the server must be root).
	Credential *syscall.Credential
	// Timeout bounds it (0: only ctx does); then its whole group is killed.
	Timeout time.Duration
	// OutputMax is how much of its combined output is kept, the end of it
	// (default 8 KiB).
	OutputMax int
	// KeepStdout keeps its standard output apart (up to 1 MiB) in
	// Result.Stdout: for hooks that answer there.
	KeepStdout bool
	// WaitDelay is how long after the command ended its output pipe may
	// stay open (held by a child) before it is closed (default 5 s).
	WaitDelay time.Duration
}

// Result is what a command did.
type Result struct {
	// Stdout is what it wrote to its standard output, with KeepStdout.
	Stdout string
	// Output is the end of its standard output and error together, and
	// OutputBytes how much it wrote in all.
	Output      string
	OutputBytes int64
}

// Error is a command that failed or ran out of time.
type Error struct {
	What     string
	TimedOut bool
	Timeout  time.Duration
	Err      error  // how it ended
	Output   string // the end of what it printed
}

func (e *Error) Error() string {
	if e.TimedOut {
		if e.Timeout > 0 {
			return fmt.Sprintf("%s: killed with its process group after %v", e.What, e.Timeout)
		}
		return fmt.Sprintf("%s: killed with its process group: %v", e.What, e.Err)
	}
	if e.Output == "" {
		return fmt.Sprintf("%s: %v", e.What, e.Err)
	}
	return fmt.Sprintf("%s: %v: %s", e.What, e.Err, e.Output)
}

func (e *Error) Unwrap() error { return e.Err }

// Run runs c bounded by ctx and c.Timeout (RunInGroup). A command that
// exits non-zero, cannot start or runs out of time returns an *Error.
func Run(ctx context.Context, c Command) (Result, error) {
	var cmd *exec.Cmd
	if c.Shell != "" {
		cmd = exec.Command("/bin/sh", "-c", c.Shell)
	} else {
		cmd = exec.Command(c.Path, c.Args...)
	}
	cmd.Dir, cmd.Env = c.Dir, c.Env
	if c.Credential != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.Credential}
	}
	cmd.WaitDelay = c.WaitDelay
	if cmd.WaitDelay == 0 {
		cmd.WaitDelay = 5 * time.Second
	}
	max := c.OutputMax
	if max <= 0 {
		max = 8 << 10
	}
	tail := &tailBuffer{max: max}
	var stdout *headBuffer
	cmd.Stdout, cmd.Stderr = tail, tail
	if c.KeepStdout {
		stdout = &headBuffer{max: 1 << 20}
		cmd.Stdout = &teeWriter{stdout, tail}
	}
	timedOut, err := RunInGroup(ctx, cmd, c.Timeout)
	res := Result{Output: tail.String(), OutputBytes: tail.Len()}
	if stdout != nil {
		res.Stdout = stdout.String()
	}
	if timedOut {
		cause := context.DeadlineExceeded
		if ctx.Err() != nil {
			cause = ctx.Err()
		}
		return res, &Error{What: c.What, TimedOut: true, Timeout: c.Timeout, Err: cause, Output: res.Output}
	}
	if err != nil {
		return res, &Error{What: c.What, Err: err, Output: res.Output}
	}
	return res, nil
}

// teeWriter writes to both; a's errors are ignored (a buffer).
type teeWriter struct {
	a, b interface{ Write([]byte) (int, error) }
}

func (t *teeWriter) Write(p []byte) (int, error) {
	t.a.Write(p)
	return t.b.Write(p)
}

// headBuffer keeps the first max bytes written.
type headBuffer struct {
	max int
	b   bytes.Buffer
}

func (h *headBuffer) Write(p []byte) (int, error) {
	if room := h.max - h.b.Len(); room > 0 {
		h.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (h *headBuffer) String() string { return h.b.String() }

// tailBuffer keeps the last max bytes written and counts them all. The
// command's two outputs write to it from two goroutines.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	n   int64
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n += int64(len(p))
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.b))
}

func (t *tailBuffer) Len() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n
}
