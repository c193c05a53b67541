package main_test

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/tlsca"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// hookSetup builds the binaries and prepares the example compute hook's
// directory: it returns the binaries' directory, a scratch directory, the
// hook's VM directory and the hook.
func hookSetup(t *testing.T) (bin, dir, hookDir, hook string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	bin = ferrytest.BuildBinaries(t)
	dir = t.TempDir()
	hookDir = filepath.Join(dir, "vms")
	os.MkdirAll(hookDir, 0o755)
	t.Setenv("FERRY_HOOK_DIR", hookDir)
	hook, _ = filepath.Abs("testdata/compute-hook.sh")
	return bin, dir, hookDir, hook
}

// TestFailoverWithHooks drives the real binaries the way an operator of
// real machines would: ferry-ps creates VMs through a compute hook script,
// ferry-agent shuts its machine down through a shutdown hook, and ferryctl
// runs a test failover, its cleanup, a planned failover and the commit.
func TestFailoverWithHooks(t *testing.T) {
	bin, dir, hookDir, hook := hookSetup(t)

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
	psArgs := []string{"serve", "--insecure", "--data", filepath.Join(dir, "ps"), "--listen", addr, "--metrics", "",
		"--compute-hook", hook, "--process-interval", "100ms"}
	// With the NBD clients at hand, the test failover's disks reach the
	// hook as nbd:// URIs of copy-on-write overlays instead of copies.
	_, nbdErr := exec.LookPath("nbdcopy")
	withNBD := nbdErr == nil
	if withNBD {
		psArgs = append(psArgs, "--nbd-listen", "unix:"+filepath.Join(dir, "ps-nbd.sock"))
	}
	ps := ferrytest.Start(t, filepath.Join(bin, "ferry-ps"), psArgs...)
	ag := ferrytest.Start(t, filepath.Join(bin, "ferry-agent"), "run", "--insecure", "--ps", addr, "--vm", "host1", "--disk", "os="+img,
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
		// Stdout only: with --insecure ferryctl warns on stderr.
		cmd := exec.Command(filepath.Join(bin, "ferryctl"), append([]string{"--insecure", "--ps", addr}, args...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("ferryctl %v: %v\n%s%s", args, err, out, stderr.String())
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
		if !strings.HasPrefix(path, "nbd") {
			t.Fatalf("test failover disk %q is not an NBD overlay", path)
		}
		copyPath := filepath.Join(dir, "testvm.img")
		if out, err := exec.Command("nbdcopy", path, copyPath).CombinedOutput(); err != nil {
			t.Fatalf("nbdcopy %s: %v\n%s", path, err, out)
		}
		path = copyPath
	}
	sameAsSource(path)
	if withNBD {
		if out := ctl("exports"); !strings.Contains(out, "test failover") || !strings.Contains(out, "host1") {
			t.Fatalf("exports during the test failover:\n%s", out)
		}
	}

	// Export to a file: mode 0600, never over an existing file or through
	// a link planted in its place.
	exp := filepath.Join(dir, "export.img")
	ctl("export", "--vm", "host1", "--disk", "os", "--out", exp)
	sameAsSource(exp)
	if fi, err := os.Stat(exp); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("exported image mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	victim, link := filepath.Join(dir, "victim"), filepath.Join(dir, "link.img")
	os.WriteFile(victim, []byte("keep"), 0o644)
	os.Symlink(victim, link)
	for _, args := range [][]string{{"--out", exp}, {"--out", link}, {"--out", link, "--force"}} {
		cmd := exec.Command(filepath.Join(bin, "ferryctl"), append([]string{"--insecure", "--ps", addr, "export", "--vm", "host1", "--disk", "os"}, args...)...)
		if out, err := cmd.CombinedOutput(); err == nil || (!strings.Contains(string(out), "--force") && !strings.Contains(string(out), "not a regular file")) {
			t.Fatalf("export %v: %v\n%s", args, err, out)
		}
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Fatalf("export wrote through a link: victim holds %d bytes", len(b))
	}
	ctl("export", "--vm", "host1", "--disk", "os", "--out", exp, "--force")
	sameAsSource(exp)

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

// TestPoliciesGroupsPlans drives policies, a replication group and a
// recovery plan through ferryctl against the real binaries: an edited
// policy reaches the connected agents, the failback policy cannot be
// edited, a group cuts a multi-VM point through two agents' write
// splitters, and a plan fails over group after group with its shell
// actions, waits at its manual step and resumes.
func TestPoliciesGroupsPlans(t *testing.T) {
	bin, dir, hookDir, hook := hookSetup(t)
	// The actions run as an unprivileged user: their log is where that
	// user may write.
	actionDir, err := os.MkdirTemp("", "ferry-actions-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(actionDir)
	os.Chmod(actionDir, 0o777)
	actionLog := filepath.Join(actionDir, "actions.log")
	actionUser := "nobody"
	if os.Getuid() != 0 {
		u, _ := user.Current()
		actionUser = u.Username
	}

	addr := ferrytest.FreeAddr(t)
	// Over TLS, as deployed: a CA, an operator certificate, agents enrolled
	// with single-use tokens.
	caDir, opDir := filepath.Join(dir, "ca"), filepath.Join(dir, "operator")
	ferrytest.Run(t, filepath.Join(bin, "ferry-ps"), "ca", "init", "--ca", caDir)
	ferrytest.Run(t, filepath.Join(bin, "ferry-ps"), "ca", "issue", "--ca", caDir, "--role", "operator", "--name", "ops", "--out", opDir)
	adminDir := filepath.Join(dir, "admin")
	ferrytest.Run(t, filepath.Join(bin, "ferry-ps"), "ca", "issue", "--ca", caDir, "--role", "admin", "--name", "root-ops", "--out", adminDir)
	ps := ferrytest.Start(t, filepath.Join(bin, "ferry-ps"), "serve", "--ca", caDir, "--data", filepath.Join(dir, "ps"), "--listen", addr, "--metrics", "",
		"--compute-hook", hook, "--process-interval", "100ms", "--plan-action-user", actionUser, "--plan-action-env", "FERRY_ACTION_LOG="+actionLog)
	for i, vm := range []string{"host-a", "host-b", "host-c"} {
		img := filepath.Join(dir, vm+".img")
		data := make([]byte, 4<<20)
		for j := range 64 {
			data[j*4096+i] = byte(j + 1)
		}
		os.WriteFile(img, data, 0o644)
		token := strings.TrimSpace(ferrytest.Run(t, filepath.Join(bin, "ferry-ps"), "enroll", "--ca", caDir, "--vm", vm))
		tokenFile := filepath.Join(dir, vm+".token")
		os.WriteFile(tokenFile, []byte(token+"\n"), 0o600)
		args := []string{"run", "--ps", addr, "--vm", vm, "--disk", "os=" + img, "--state", filepath.Join(dir, "agent-"+vm), "--scan-interval", "100ms", "--token-file", tokenFile}
		if vm != "host-c" {
			// The group's members capture writes in their splitter.
			args = append(args, "--nbd-listen", "unix:"+filepath.Join(dir, vm+".sock"))
		}
		ferrytest.Start(t, filepath.Join(bin, "ferry-agent"), args...)
	}
	creds, err := tlsca.DialOption(opDir, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(addr, creds)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	rc := ferryv1.NewRecoveryClient(cc)
	points := func(vm string) []*ferryv1.RecoveryPoint {
		resp, err := rc.ListPoints(context.Background(), &ferryv1.ListPointsRequest{Vm: vm})
		if err != nil {
			return nil
		}
		return resp.GetPoints()
	}
	for _, vm := range []string{"host-a", "host-b", "host-c"} {
		ferrytest.WaitFor(t, 60*time.Second, vm+"'s first point", func() bool { return len(points(vm)) > 0 })
	}
	run := func(args ...string) (string, error) {
		out, err := exec.Command(filepath.Join(bin, "ferryctl"), append([]string{"--ps", addr, "--tls-dir", opDir}, args...)...).CombinedOutput()
		return string(out), err
	}
	ctl := func(args ...string) string {
		t.Helper()
		out, err := run(args...)
		if err != nil {
			t.Fatalf("ferryctl %v: %v\n%s", args, err, out)
		}
		return out
	}

	// Without a certificate ferryctl does not even try; with an agent's it
	// is refused.
	if out, err := exec.Command(filepath.Join(bin, "ferryctl"), "--ps", addr, "vms").CombinedOutput(); err == nil || !strings.Contains(string(out), "no TLS identity") {
		t.Fatalf("ferryctl without a certificate: %v\n%s", err, out)
	}
	if out, err := exec.Command(filepath.Join(bin, "ferryctl"), "--ps", addr, "--tls-dir", filepath.Join(dir, "agent-host-a", "tls"), "vms").CombinedOutput(); err == nil || !strings.Contains(string(out), "may not call ferry.v1.Recovery") {
		t.Fatalf("ferryctl with an agent's certificate: %v\n%s", err, out)
	}
	if out := ctl("policy", "list"); !strings.Contains(out, "default") || !strings.Contains(out, "vmware-72h") || !strings.Contains(out, "failback") {
		t.Fatalf("policy list:\n%s", out)
	}
	if out, err := run("policy", "edit", "failback", "--retention", "48h"); err == nil || !strings.Contains(out, "cannot be edited") {
		t.Fatalf("editing the failback policy: %v\n%s", err, out)
	}
	if out, err := run("policy", "edit", "default", "--retention", "10m"); err == nil || !strings.Contains(out, "retention") {
		t.Fatalf("a 10m retention: %v\n%s", err, out)
	}
	// The agents follow the default policy (a point every 5 minutes) until
	// it says every second.
	before := len(points("host-a"))
	ctl("policy", "edit", "default", "--crash-interval", "1s")
	ferrytest.WaitFor(t, 30*time.Second, "points at the edited policy's frequency", func() bool { return len(points("host-a")) >= before+3 })
	ctl("policy", "edit", "gold", "--retention", "72h", "--crash-interval", "30s", "--app-interval", "0")
	ctl("policy", "attach", "--vm", "host-c", "--policy", "gold")
	if out := ctl("policy", "show", "gold"); !strings.Contains(out, "host-c") || !strings.Contains(out, "72h0m0s") || !strings.Contains(out, "off") {
		t.Fatalf("policy show gold:\n%s", out)
	}

	ctl("group", "create", "erp", "--vm", "host-a", "--vm", "host-b")
	if out, err := run("group", "create", "other", "--vm", "host-a", "--vm", "host-c"); err == nil || !strings.Contains(out, "already in replication group erp") {
		t.Fatalf("a VM in two groups: %v\n%s", err, out)
	}
	out := ctl("group", "point", "erp")
	if !strings.Contains(out, "multi-VM point group/erp/") {
		t.Fatalf("group point:\n%s", out)
	}
	tag := strings.Fields(strings.TrimPrefix(out, "multi-VM point "))[0]
	for _, vm := range []string{"host-a", "host-b"} {
		ferrytest.WaitFor(t, 30*time.Second, vm+"'s multi-VM point", func() bool {
			for _, p := range points(vm) {
				if p.GetTag() == tag {
					return true
				}
			}
			return false
		})
	}

	// Newer single-VM points arrive after the group's point; grouped VMs
	// must still take the common one.
	n := len(points("host-b"))
	ferrytest.WaitFor(t, 30*time.Second, "newer points of host-b", func() bool { return len(points("host-b")) >= n+2 })
	// Its command actions run on the server: an operator may not upload
	// the plan, an admin may.
	if out, err := run("plan", "put", "--file", "testdata/plan.json"); err == nil || !strings.Contains(out, "needs an admin certificate") {
		t.Fatalf("an operator uploading a plan with commands: %v\n%s", err, out)
	}
	if out, err := exec.Command(filepath.Join(bin, "ferryctl"), "--ps", addr, "--tls-dir", adminDir, "plan", "put", "--file", "testdata/plan.json").CombinedOutput(); err != nil {
		t.Fatalf("an admin uploading the plan: %v\n%s", err, out)
	}
	if out := ctl("plan", "show", "erp"); !strings.Contains(out, "group 2 pre:  confirm the licence server is up (manual") || !strings.Contains(out, "uploaded by admin/root-ops") {
		t.Fatalf("plan show:\n%s", out)
	}
	if out, err := run("plan", "delete", "erp"); err == nil || !strings.Contains(out, "needs an admin certificate") {
		t.Fatalf("an operator deleting a plan with commands: %v\n%s", err, out)
	}
	if out, err := run("plan", "run", "erp", "--op", "test-failover", "--point", "42"); err == nil || !strings.Contains(out, "custom point") {
		t.Fatalf("a custom point for a plan: %v\n%s", err, out)
	}
	out = ctl("plan", "run", "erp", "--op", "test-failover", "--point", "latest-multivm-processed")
	if !strings.Contains(out, "waits for an operator") || !strings.Contains(out, "ferryctl plan resume erp") {
		t.Fatalf("plan run:\n%s", out)
	}
	if ents, _ := os.ReadDir(hookDir); len(ents) != 2 {
		t.Fatalf("%d test VMs while the plan waits after group 1, want 2", len(ents))
	}
	out = ctl("plan", "resume", "erp")
	if !strings.Contains(out, "succeeded") {
		t.Fatalf("plan resume:\n%s", out)
	}
	if ents, _ := os.ReadDir(hookDir); len(ents) != 3 {
		t.Fatalf("%d test VMs after the plan, want 3", len(ents))
	}
	logged, _ := os.ReadFile(actionLog)
	want := "test-failover group 1: drain\ntest-failover group 1: check\ntest-failover group 2: dns\n"
	if string(logged) != want {
		t.Fatalf("actions ran:\n%s\nwant:\n%s", logged, want)
	}
	jobs, err := rc.ListJobs(context.Background(), &ferryv1.ListJobsRequest{Vm: "plan/erp"})
	if err != nil {
		t.Fatal(err)
	}
	planJob := jobs.GetJobs()[len(jobs.GetJobs())-1]
	if planJob.GetRequestedBy() != "operator/ops" {
		t.Fatalf("plan job requested by %q", planJob.GetRequestedBy())
	}
	resumed := false
	for _, st := range planJob.GetSteps() {
		resumed = resumed || st.GetDetail() == "resumed by operator/ops"
	}
	if !resumed {
		t.Fatalf("the manual step does not say who resumed it: %v", planJob.GetSteps())
	}
	// The group also cuts its points on its own now (every second, as the
	// policy says): both members take the same, newest common one.
	tags := map[string]string{}
	for _, id := range planJob.GetChildren() {
		j, _ := rc.GetJob(context.Background(), &ferryv1.GetJobRequest{Id: id})
		tags[j.GetVm()] = j.GetPoint().GetTag()
	}
	if !strings.HasPrefix(tags["host-a"], "group/erp/") || tags["host-a"] != tags["host-b"] || strings.HasPrefix(tags["host-c"], "group/") {
		t.Fatalf("plan failed over to points %v", tags)
	}
	ctl("plan", "run", "erp", "--op", "cleanup-test")
	if ents, _ := os.ReadDir(hookDir); len(ents) != 0 {
		t.Fatalf("plan cleanup left %d VMs", len(ents))
	}
	ps.Stop(t)
}
