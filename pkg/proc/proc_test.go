package proc

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHostileHookThatForks: a command that forks a child holding its
// output and hangs is killed with the child at the bound, and reported as
// timed out; one that ends in time is not, and what it left running in
// its group goes too.
func TestHostileHookThatForks(t *testing.T) {
	dir := t.TempDir()
	gone := func(pidFile string) bool {
		b, _ := os.ReadFile(pidFile)
		stat, err := os.ReadFile("/proc/" + strings.TrimSpace(string(b)) + "/stat")
		return len(b) > 0 && (err != nil || strings.Contains(string(stat), ") Z "))
	}
	for _, tc := range []struct {
		name     string
		script   string
		timedOut bool
	}{
		{"hangs", "sleep 600 & echo $! > " + filepath.Join(dir, "hangs") + "; sleep 600", true},
		{"leaves a child", "sleep 600 & echo $! > " + filepath.Join(dir, "leaves"), false},
	} {
		cmd := exec.Command("sh", "-c", tc.script)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.WaitDelay = time.Second
		start := time.Now()
		timedOut, err := RunInGroup(context.Background(), cmd, time.Second)
		if timedOut != tc.timedOut || (err == nil) == tc.timedOut || time.Since(start) > 10*time.Second {
			t.Fatalf("%s: timed out %v, err %v after %v", tc.name, timedOut, err, time.Since(start))
		}
		pidFile := filepath.Join(dir, strings.Fields(tc.name)[0])
		deadline := time.Now().Add(5 * time.Second)
		for !gone(pidFile) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the forked child is still running", tc.name)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// TestRun: a command's answer on standard output is kept apart, the end of
// everything it printed is kept up to the bound and counted in full, and
// a failure says what failed, how it ended and what it printed last.
func TestRun(t *testing.T) {
	ctx := context.Background()
	res, err := Run(ctx, Command{What: "compute hook", Shell: "echo vm-17; echo progress >&2", KeepStdout: true})
	if err != nil || res.Stdout != "vm-17\n" || !strings.Contains(res.Output, "progress") || res.OutputBytes != int64(len("vm-17\nprogress\n")) {
		t.Fatalf("answer: %+v %v", res, err)
	}
	res, err = Run(ctx, Command{What: `action "flood"`, Shell: "head -c 100000 /dev/zero | tr '\\0' x; echo; echo last words; exit 3", OutputMax: 64})
	var pe *Error
	if !errors.As(err, &pe) || pe.TimedOut || res.OutputBytes != 100000+1+11 || len(res.Output) > 64 || res.Stdout != "" {
		t.Fatalf("flood: %+v %v", res, err)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.HasPrefix(err.Error(), `action "flood": exit status 3: `) || !strings.HasSuffix(err.Error(), "last words") {
		t.Fatalf("flood error: %v", err)
	}
	_, err = Run(ctx, Command{What: "start hook", Shell: "sleep 60", Timeout: 200 * time.Millisecond})
	if !errors.As(err, &pe) || !pe.TimedOut || err.Error() != "start hook: killed with its process group after 200ms" || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("timeout: %v", err)
	}
	if _, err := Run(ctx, Command{What: "hook", Path: "/nonexistent/hook"}); !errors.As(err, &pe) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing program: %v", err)
	}
}
