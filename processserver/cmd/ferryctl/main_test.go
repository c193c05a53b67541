package main_test

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/pkg/ferrytest"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// TestFailoverWithHooks drives the real binaries the way an operator of
// real machines would: ferry-ps creates VMs through a compute hook script,
// ferry-agent shuts its machine down through a shutdown hook, and ferryctl
// runs a test failover, its cleanup, a planned failover and the commit.
func TestFailoverWithHooks(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	bin := ferrytest.BuildBinaries(t)
	dir := t.TempDir()
	hookDir := filepath.Join(dir, "vms")
	os.MkdirAll(hookDir, 0o755)
	t.Setenv("FERRY_HOOK_DIR", hookDir)
	hook, _ := filepath.Abs("testdata/compute-hook.sh")

	img := filepath.Join(dir, "disk.img")
	data := make([]byte, 8<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < len(data); i += 4096 {
		if rng.IntN(3) == 0 {
			for j := i; j < i+4096; j++ {
				data[j] = byte(rng.Uint32())
			}
		}
	}
	os.WriteFile(img, data, 0o644)
	machine := filepath.Join(dir, "machine.json")
	os.WriteFile(machine, []byte(`{"os":"linux","mobilityAgentVersion":"9.55","dhcp":true,"sshEnabledAtBoot":true,"sshFirewallAllowed":true}`), 0o644)

	addr := ferrytest.FreeAddr(t)
	psArgs := []string{"serve", "--data", filepath.Join(dir, "ps"), "--listen", addr, "--metrics", "",
		"--compute-hook", hook, "--process-interval", "100ms"}
	// With the NBD clients at hand, the test failover's disks reach the
	// hook as nbd:// URIs of copy-on-write overlays instead of copies.
	_, nbdErr := exec.LookPath("nbdcopy")
	withNBD := nbdErr == nil
	if withNBD {
		psArgs = append(psArgs, "--nbd-listen", ferrytest.FreeAddr(t))
	}
	ps := ferrytest.Start(t, filepath.Join(bin, "ferry-ps"), psArgs...)
	ag := ferrytest.Start(t, filepath.Join(bin, "ferry-agent"), "run", "--ps", addr, "--vm", "host1", "--disk", "os="+img,
		"--state", filepath.Join(dir, "agent"), "--scan-interval", "100ms", "--crash-interval", "1s",
		"--machine", machine, "--shutdown-hook", "true")
	cc := ferrytest.Dial(t, addr)
	rc := ferryv1.NewRecoveryClient(cc)
	ferrytest.WaitFor(t, 60*time.Second, "a recovery point", func() bool {
		resp, err := rc.ListPoints(context.Background(), &ferryv1.ListPointsRequest{Vm: "host1"})
		return err == nil && len(resp.GetPoints()) > 0
	})
	ctl := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(filepath.Join(bin, "ferryctl"), append([]string{"--ps", addr}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ferryctl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	// instance returns the one VM the hook holds and its disk image.
	instance := func() (string, string) {
		t.Helper()
		ents, _ := os.ReadDir(hookDir)
		if len(ents) != 1 {
			t.Fatalf("%d VMs in the hook's directory, want 1", len(ents))
		}
		disks, _ := os.ReadFile(filepath.Join(hookDir, ents[0].Name(), "disks"))
		_, path, _ := strings.Cut(strings.TrimSpace(string(disks)), "=")
		return ents[0].Name(), path
	}
	sameAsSource := func(path string) {
		t.Helper()
		got, _ := os.ReadFile(path)
		if d := ferrytest.Diff(got, data); d != "" {
			t.Fatalf("failed-over disk %s differs from the source: %s", path, d)
		}
	}

	out := ctl("failover", "--type", "test", "--vm", "host1", "--point", "latest")
	if !strings.Contains(out, "succeeded") || !strings.Contains(out, "readiness checks") {
		t.Fatalf("test failover:\n%s", out)
	}
	id, path := instance()
	if withNBD {
		if !strings.HasPrefix(path, "nbd://") {
			t.Fatalf("test failover disk %q is not an NBD overlay", path)
		}
		copyPath := filepath.Join(dir, "testvm.img")
		if out, err := exec.Command("nbdcopy", path, copyPath).CombinedOutput(); err != nil {
			t.Fatalf("nbdcopy %s: %v\n%s", path, err, out)
		}
		path = copyPath
	}
	sameAsSource(path)
	if st, _ := os.ReadFile(filepath.Join(hookDir, id, "state")); strings.TrimSpace(string(st)) != "running" {
		t.Fatalf("hook VM state %q", st)
	}
	if out := ctl("status", "--vm", "host1"); !strings.Contains(out, "test failover running") || !strings.Contains(out, "cleanup-test") {
		t.Fatalf("status:\n%s", out)
	}
	ctl("cleanup-test", "--vm", "host1")
	if ents, _ := os.ReadDir(hookDir); len(ents) != 0 {
		t.Fatalf("cleanup left %d VMs", len(ents))
	}

	out = ctl("failover", "--type", "planned", "--vm", "host1")
	if !strings.Contains(out, `tag "shutdown"`) || !strings.Contains(out, "fence the source's agent") {
		t.Fatalf("planned failover:\n%s", out)
	}
	_, path = instance()
	sameAsSource(path)
	// The fenced agent is refused and stops with an error naming the epoch.
	if err := ag.Cmd.Wait(); err == nil || !strings.Contains(ag.Log(), "epoch") {
		t.Fatalf("agent after failover: %v\n%s", err, ag.Log())
	}
	ctl("commit", "--vm", "host1")
	if out := ctl("points", "--vm", "host1"); strings.Count(out, "\n") != 1 {
		t.Fatalf("points after commit:\n%s", out)
	}
	if out := ctl("jobs", "--vm", "host1"); strings.Count(out, "succeeded") != 4 {
		t.Fatalf("jobs:\n%s", out)
	}
	ps.Stop(t)
}
