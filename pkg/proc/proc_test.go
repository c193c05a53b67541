package proc

import (
	"bytes"
	"context"
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
