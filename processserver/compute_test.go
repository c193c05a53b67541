package processserver

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHostileComputeHookHangs: a compute hook that hangs (and forks) is
// killed with its process group at its timeout, and the call fails saying
// so; find reports a machine create made.
func TestHostileComputeHookHangs(t *testing.T) {
	dir := t.TempDir()
	hook := filepath.Join(dir, "hook.sh")
	os.WriteFile(hook, []byte("#!/bin/sh\ncase $1 in\nfind) echo web-17 ;;\n*) sleep 600 & sleep 600 ;;\nesac\n"), 0o755)
	h := HookCompute{Command: hook, Timeout: time.Second}
	start := time.Now()
	_, err := h.Create(context.Background(), VMSpec{Name: "web", Disks: []DiskSpec{{Name: "os", Path: "/dev/null"}}})
	if err == nil || !strings.Contains(err.Error(), "killed with its process group") || time.Since(start) > 10*time.Second {
		t.Fatalf("a hanging hook: %v after %v", err, time.Since(start))
	}
	if id, ok, err := h.Find(context.Background(), "web"); err != nil || !ok || id != "web-17" {
		t.Fatalf("find: %q %v %v", id, ok, err)
	}
}
