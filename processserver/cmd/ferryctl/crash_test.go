package main_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/ferrytest"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// TestHostileCrashDuringFailover kills ferry-ps while the compute hook is
// inside create (the machine exists, its ID not yet returned). At restart
// the job is marked interrupted and the machine is found by name and
// removed; the retried failover makes exactly one machine.
func TestHostileCrashDuringFailover(t *testing.T) {
	bin, dir, hookDir, hook := hookSetup(t)
	img := filepath.Join(dir, "disk.img")
	os.WriteFile(img, make([]byte, 4<<20), 0o644)
	addr := ferrytest.FreeAddr(t)
	psArgs := []string{"serve", "--insecure", "--data", filepath.Join(dir, "ps"), "--listen", addr, "--metrics", "",
		"--compute-hook", hook, "--process-interval", "100ms"}
	ps := ferrytest.Start(t, filepath.Join(bin, "ferry-ps"), psArgs...)
	ferrytest.Start(t, filepath.Join(bin, "ferry-agent"), "run", "--insecure", "--ps", addr, "--vm", "host1", "--disk", "os="+img,
		"--state", filepath.Join(dir, "agent"), "--scan-interval", "100ms", "--crash-interval", "1s")
	rc := ferryv1.NewRecoveryClient(ferrytest.Dial(t, addr))
	ferrytest.WaitFor(t, 60*time.Second, "a recovery point", func() bool {
		resp, err := rc.ListPoints(context.Background(), &ferryv1.ListPointsRequest{Vm: "host1"})
		return err == nil && len(resp.GetPoints()) > 0
	})
	ctl := func(args ...string) (string, error) {
		out, err := exec.Command(filepath.Join(bin, "ferryctl"), append([]string{"--insecure", "--ps", addr}, args...)...).CombinedOutput()
		return string(out), err
	}
	machines := func() int {
		ents, _ := os.ReadDir(hookDir)
		n := 0
		for _, e := range ents {
			if e.IsDir() {
				n++
			}
		}
		return n
	}

	hold := filepath.Join(hookDir, ".hold-create")
	os.WriteFile(hold, nil, 0o644)
	failover := exec.Command(filepath.Join(bin, "ferryctl"), "--insecure", "--ps", addr, "failover", "--type", "unplanned", "--vm", "host1")
	if err := failover.Start(); err != nil {
		t.Fatal(err)
	}
	ferrytest.WaitFor(t, 30*time.Second, "the hook to make the machine", func() bool { return machines() == 1 })
	ps.Kill()
	os.Remove(hold)
	failover.Wait()

	ps = ferrytest.Start(t, filepath.Join(bin, "ferry-ps"), psArgs...)
	back := func() {
		ferrytest.WaitFor(t, 30*time.Second, "ferry-ps back", func() bool {
			_, err := ctl("vms")
			return err == nil
		})
	}
	back()
	if n := machines(); n != 0 {
		t.Fatalf("%d machines after the restart, want the interrupted failover's removed", n)
	}
	jobs, err := ctl("jobs", "--vm", "host1")
	if err != nil || !strings.Contains(jobs, "interrupted") || strings.Contains(jobs, "running") {
		t.Fatalf("jobs after the restart: %v\n%s", err, jobs)
	}
	if ev, _ := ctl("events", "--vm", "host1"); !strings.Contains(ev, "undone at restart") {
		t.Fatalf("events:\n%s", ev)
	}
	if out, err := ctl("failover", "--type", "unplanned", "--vm", "host1"); err != nil || !strings.Contains(out, "succeeded") {
		t.Fatalf("retried failover: %v\n%s", err, out)
	}
	if n := machines(); n != 1 {
		t.Fatalf("%d machines after the retried failover, want 1", n)
	}
	// A failover and a change of point that completed stand across a kill.
	if out, err := ctl("change-point", "--vm", "host1", "--point", "latest-processed"); err != nil || !strings.Contains(out, "succeeded") {
		t.Fatalf("change point: %v\n%s", err, out)
	}
	ps.Kill()
	ps = ferrytest.Start(t, filepath.Join(bin, "ferry-ps"), psArgs...)
	back()
	if n := machines(); n != 1 {
		t.Fatalf("%d machines after a restart with a completed failover, want 1", n)
	}
	if st, _ := ctl("status", "--vm", "host1"); !strings.Contains(st, "failed-over") {
		t.Fatalf("status after the restart:\n%s", st)
	}
	if out, err := ctl("commit", "--vm", "host1"); err != nil {
		t.Fatalf("commit: %v\n%s", err, out)
	}
}
