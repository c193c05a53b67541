package processserver_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry/internal/ferrytest"
	"github.com/ferrydr/ferry/pkg/plan"
	"github.com/ferrydr/ferry/pkg/tlsca"
	"github.com/ferrydr/ferry/processserver"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// TestHostilePlanActions: a plan with command actions needs an admin to be
// uploaded, replaced or removed (an operator is refused and nothing
// changes); the server records who uploaded it. Its commands run as an
// unprivileged user, in / with a clean environment: they cannot read the
// CA's key, their output is not in the step report, and at the timeout a
// child that forked is killed with the action's process group.
func TestHostilePlanActions(t *testing.T) {
	ctx := context.Background()
	op, admin := tlsca.Identity{Role: tlsca.RoleOperator, Name: "ops"}, tlsca.Identity{Role: tlsca.RoleAdmin, Name: "root-ops"}
	site := startTLSSite(t)
	caDir := site.CADir
	if err := exchange(t, ferryv1.NewReplicationClient(site.dial(site.issue(tlsca.Identity{Role: tlsca.RoleAgent, Name: "vm1"}))), hello("vm1", 1, 1<<20)); err != nil {
		t.Fatal(err)
	}
	opc, adminc := ferryv1.NewRecoveryClient(site.dial(site.issue(op))), ferryv1.NewRecoveryClient(site.dial(site.issue(admin)))
	withCommand := &ferryv1.RecoveryPlan{Name: "erp", Groups: []*ferryv1.PlanGroup{{Vms: []string{"vm1"},
		Pre: []*ferryv1.PlanAction{{Name: "drain", Command: "cat " + filepath.Join(caDir, tlsca.CAKey)}}}}}
	manualOnly := &ferryv1.RecoveryPlan{Name: "erp", Groups: []*ferryv1.PlanGroup{{Vms: []string{"vm1"},
		Pre: []*ferryv1.PlanAction{{Name: "call the DBA", Manual: true}}}}}
	plans := func() []*ferryv1.RecoveryPlan {
		resp, err := opc.ListPlans(ctx, &ferryv1.ListPlansRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetPlans()
	}
	if _, err := opc.PutPlan(ctx, withCommand); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "admin certificate") {
		t.Fatalf("an operator uploading a plan with a command: %v", err)
	}
	if len(plans()) != 0 {
		t.Fatal("the refused plan was stored")
	}
	if _, err := opc.PutPlan(ctx, manualOnly); err != nil {
		t.Fatalf("an operator uploading a plan without commands: %v", err)
	}
	if _, err := adminc.PutPlan(ctx, withCommand); err != nil {
		t.Fatalf("an admin uploading a plan with a command: %v", err)
	}
	if ps := plans(); len(ps) != 1 || ps[0].GetUploadedBy() != "admin/root-ops" || ps[0].GetUploadedUnixNano() == 0 {
		t.Fatalf("stored plans: %v", ps)
	}
	if _, err := opc.PutPlan(ctx, manualOnly); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("an operator replacing a plan with commands: %v", err)
	}
	if _, err := opc.DeletePlan(ctx, &ferryv1.DeletePlanRequest{Name: "erp"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("an operator deleting a plan with commands: %v", err)
	}
	if ps := plans(); len(ps) != 1 || len(ps[0].GetGroups()[0].GetPre()) != 1 || ps[0].GetGroups()[0].GetPre()[0].GetCommand() == "" {
		t.Fatalf("the plan after refused changes: %v", ps)
	}

	if os.Getuid() != 0 {
		t.Skip("running actions as another user needs root")
	}
	const nobody = 65534
	runner := processserver.ShellActions{Timeout: 2 * time.Second, User: credential(nobody), UserName: "nobody", Log: ferrytest.Logger(t)}
	shared, err := os.MkdirTemp("", "ferry-action-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(shared)
	os.Chmod(shared, 0o777)
	os.Setenv("FERRY_SERVER_SECRET", "server-environment") // the server's own environment
	defer os.Unsetenv("FERRY_SERVER_SECRET")
	detail, err := runner.Run(ctx, "erp", 1, "test-failover", plan.Action{Name: "leak",
		Command: "id -u > " + shared + "/uid; pwd > " + shared + "/pwd; env > " + shared + "/env; echo SECRET-OUTPUT; cat " + filepath.Join(caDir, tlsca.CAKey)})
	if err == nil {
		t.Fatal("an action read the CA's key")
	}
	if strings.Contains(detail, "SECRET-OUTPUT") || strings.Contains(detail, "PRIVATE") || strings.Contains(err.Error(), "SECRET-OUTPUT") {
		t.Fatalf("the step report carries the action's output: %q, %v", detail, err)
	}
	uid, _ := os.ReadFile(filepath.Join(shared, "uid"))
	pwd, _ := os.ReadFile(filepath.Join(shared, "pwd"))
	env, _ := os.ReadFile(filepath.Join(shared, "env"))
	if strings.TrimSpace(string(uid)) != strconv.Itoa(nobody) || strings.TrimSpace(string(pwd)) != "/" {
		t.Fatalf("the action ran as uid %q in %q", uid, pwd)
	}
	if strings.Contains(string(env), "server-environment") || !strings.Contains(string(env), "FERRY_PLAN=erp") {
		t.Fatalf("the action's environment:\n%s", env)
	}

	start := time.Now()
	_, err = runner.Run(ctx, "erp", 1, "test-failover", plan.Action{Name: "hang",
		Command: "sleep 600 & echo $! > " + shared + "/child; sleep 600"})
	if err == nil || !strings.Contains(err.Error(), "killed with its process group after") || time.Since(start) > 20*time.Second {
		t.Fatalf("a hanging action: %v after %v", err, time.Since(start))
	}
	child, _ := os.ReadFile(filepath.Join(shared, "child"))
	pid := strings.TrimSpace(string(child))
	ferrytest.WaitFor(t, 10*time.Second, "the forked child "+pid+" to be gone", func() bool {
		stat, err := os.ReadFile("/proc/" + pid + "/stat")
		// Gone, or a zombie waiting for a reaper that is not ours.
		return err != nil || strings.Contains(string(stat), ") Z ")
	})
}

func credential(uid uint32) *syscall.Credential {
	return &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}
}

// TestHostileNBDOverTLSAtTheProcessServer: with TLS, ferry-ps serves its
// exports on TCP only after STARTTLS, to operator and admin certificates:
// nbdinfo reads a point with an operator's, and is refused with an
// agent's, a master target's, or none.
func TestHostileNBDOverTLSAtTheProcessServer(t *testing.T) {
	ferrytest.NeedNBDClients(t)
	ctx := context.Background()
	site := startTLSSite(t, func(c *processserver.Config) { c.NBDListen = "127.0.0.1:0" })
	ps := site.PS
	dirs := map[string]string{}
	for d, id := range map[string]tlsca.Identity{"operator": {Role: tlsca.RoleOperator, Name: "ops"}, "agent": {Role: tlsca.RoleAgent, Name: "vm1"},
		"mt": {Role: tlsca.RoleMasterTarget, Name: "mt"}} {
		dirs[d] = site.issue(id)
	}
	cc := site.dial(dirs["agent"])
	if err := exchange(t, ferryv1.NewReplicationClient(cc), hello("vm1", 1, 1<<20),
		batch(drain(1, true), write(2, 0, 0, page(7)), drain(3, false), marker(4))); err != nil {
		t.Fatal(err)
	}
	if err := ps.ProcessAll(ctx); err != nil {
		t.Fatal(err)
	}
	e, err := ps.ExportNBD(ctx, "vm1", "latest", "os", false)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(e.URI, "nbds://127.0.0.1:") {
		t.Fatalf("export URI %s", e.URI)
	}
	with := func(d string) ([]byte, error) {
		uri := e.URI
		if d != "" {
			uri += "?tls-certificates=" + dirs[d]
		}
		return exec.Command("nbdinfo", uri).CombinedOutput()
	}
	if out, err := with("operator"); err != nil || !strings.Contains(string(out), "1048576") {
		t.Fatalf("an operator's certificate: %v\n%s", err, out)
	}
	for _, d := range []string{"agent", "mt", ""} {
		if out, err := with(d); err == nil {
			t.Fatalf("certificate %q read the export:\n%s", d, out)
		}
	}
	plain := strings.Replace(e.URI, "nbds://", "nbd://", 1)
	if out, err := exec.Command("nbdinfo", plain).CombinedOutput(); err == nil {
		t.Fatalf("plain NBD read the export:\n%s", out)
	}
}
