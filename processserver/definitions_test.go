package processserver_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ferrydr/ferry/internal/ferrytest"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// TestDefinitionsRejected: wrong policies, groups and plans are refused
// with an error naming what is wrong, and none of them is stored.
func TestDefinitionsRejected(t *testing.T) {
	ps := ferrytest.StartPS(t)
	cc := ferrytest.Dial(t, ps.Server.Addr())
	rc := ferryv1.NewRecoveryClient(cc)
	repl := ferryv1.NewReplicationClient(cc)
	for _, vm := range []string{"a", "b", "c"} {
		if err := exchange(t, repl, hello(vm, 1, 1<<20), batch(drain(1, true), drain(2, false), marker(3))); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	good := &ferryv1.Policy{Name: "gold", RetentionSeconds: 72 * 3600, CrashIntervalSeconds: 300, AppIntervalSeconds: 3600, RpoThresholdSeconds: 900}
	policy := func(f func(p *ferryv1.Policy)) *ferryv1.Policy {
		p := proto.Clone(good).(*ferryv1.Policy)
		f(p)
		return p
	}
	cases := []struct {
		name string
		call func() error
		want string
	}{
		{"failback policy edited", func() error {
			_, err := rc.PutPolicy(ctx, policy(func(p *ferryv1.Policy) { p.Name = "failback" }))
			return err
		}, "cannot be edited"},
		{"policy name with a slash", func() error {
			_, err := rc.PutPolicy(ctx, policy(func(p *ferryv1.Policy) { p.Name = "a/b" }))
			return err
		}, "policy name"},
		{"retention of 10 minutes", func() error {
			_, err := rc.PutPolicy(ctx, policy(func(p *ferryv1.Policy) { p.RetentionSeconds = 600 }))
			return err
		}, "retention"},
		{"no crash-consistent frequency", func() error {
			_, err := rc.PutPolicy(ctx, policy(func(p *ferryv1.Policy) { p.CrashIntervalSeconds = 0 }))
			return err
		}, "crash-consistent frequency"},
		{"app frequency beyond retention", func() error {
			_, err := rc.PutPolicy(ctx, policy(func(p *ferryv1.Policy) { p.AppIntervalSeconds = 100 * 3600 }))
			return err
		}, "app-consistent frequency"},
		{"negative app frequency", func() error {
			_, err := rc.PutPolicy(ctx, policy(func(p *ferryv1.Policy) { p.AppIntervalSeconds = -5 }))
			return err
		}, "app-consistent frequency"},
		{"RPO threshold of 10 s", func() error {
			_, err := rc.PutPolicy(ctx, policy(func(p *ferryv1.Policy) { p.RpoThresholdSeconds = 10 }))
			return err
		}, "RPO threshold"},
		{"attach to an unknown policy", func() error {
			_, err := rc.AttachPolicy(ctx, &ferryv1.AttachPolicyRequest{Vm: "a", Policy: "nope"})
			return err
		}, "no policy named"},
		{"attach the failback policy", func() error {
			_, err := rc.AttachPolicy(ctx, &ferryv1.AttachPolicyRequest{Vm: "a", Policy: "failback"})
			return err
		}, "reprotected VMs only"},
		{"group of one VM", func() error {
			_, err := rc.PutGroup(ctx, &ferryv1.ReplicationGroup{Name: "g", Vms: []string{"a"}})
			return err
		}, "2 to 16"},
		{"group naming a VM twice", func() error {
			_, err := rc.PutGroup(ctx, &ferryv1.ReplicationGroup{Name: "g", Vms: []string{"a", "a"}})
			return err
		}, "twice"},
		{"group of an unknown VM", func() error {
			_, err := rc.PutGroup(ctx, &ferryv1.ReplicationGroup{Name: "g", Vms: []string{"a", "zz"}})
			return err
		}, "zz"},
		{"group hold timeout of a minute", func() error {
			_, err := rc.PutGroup(ctx, &ferryv1.ReplicationGroup{Name: "g", Vms: []string{"a", "b"}, HoldTimeoutMillis: 60000})
			return err
		}, "hold timeout"},
		{"point of an unknown group", func() error {
			_, err := rc.GroupPoint(ctx, &ferryv1.GroupPointRequest{Group: "nope"})
			return err
		}, "no replication group"},
		{"plan without groups", func() error {
			_, err := rc.PutPlan(ctx, &ferryv1.RecoveryPlan{Name: "p"})
			return err
		}, "no group"},
		{"plan with a VM twice", func() error {
			_, err := rc.PutPlan(ctx, &ferryv1.RecoveryPlan{Name: "p", Groups: []*ferryv1.PlanGroup{{Vms: []string{"a"}}, {Vms: []string{"a"}}}})
			return err
		}, "group 1 and group 2"},
		{"plan with an empty group", func() error {
			_, err := rc.PutPlan(ctx, &ferryv1.RecoveryPlan{Name: "p", Groups: []*ferryv1.PlanGroup{{}}})
			return err
		}, "no VM"},
		{"plan action without a command", func() error {
			_, err := rc.PutPlan(ctx, &ferryv1.RecoveryPlan{Name: "p", Groups: []*ferryv1.PlanGroup{{Vms: []string{"a"}, Pre: []*ferryv1.PlanAction{{Name: "x"}}}}})
			return err
		}, "no command"},
		{"manual plan action with a command", func() error {
			_, err := rc.PutPlan(ctx, &ferryv1.RecoveryPlan{Name: "p", Groups: []*ferryv1.PlanGroup{{Vms: []string{"a"}, Post: []*ferryv1.PlanAction{{Name: "x", Command: "true", Manual: true}}}}})
			return err
		}, "choose one"},
		{"plan of an unknown VM", func() error {
			_, err := rc.PutPlan(ctx, &ferryv1.RecoveryPlan{Name: "p", Groups: []*ferryv1.PlanGroup{{Vms: []string{"zz"}}}})
			return err
		}, "zz"},
		{"run of an unknown plan", func() error {
			_, err := rc.RunPlan(ctx, &ferryv1.RunPlanRequest{Plan: "nope", Operation: "commit"})
			return err
		}, "no recovery plan"},
	}
	for _, c := range cases {
		err := c.call()
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want InvalidArgument naming %q", c.name, err, c.want)
		}
	}
	pols, _ := rc.ListPolicies(ctx, &ferryv1.ListPoliciesRequest{})
	groups, _ := rc.ListGroups(ctx, &ferryv1.ListGroupsRequest{})
	plans, _ := rc.ListPlans(ctx, &ferryv1.ListPlansRequest{})
	if len(pols.GetPolicies()) != 3 || len(groups.GetGroups()) != 0 || len(plans.GetPlans()) != 0 {
		t.Fatalf("after refused definitions: %d policies, %d groups, %d plans stored", len(pols.GetPolicies()), len(groups.GetGroups()), len(plans.GetPlans()))
	}
	// A plan whose VMs cannot do the operation is refused before anything
	// starts.
	if _, err := rc.PutPlan(ctx, &ferryv1.RecoveryPlan{Name: "p", Groups: []*ferryv1.PlanGroup{{Vms: []string{"a", "b"}}}}); err != nil {
		t.Fatal(err)
	}
	_, err := rc.RunPlan(ctx, &ferryv1.RunPlanRequest{Plan: "p", Operation: "commit"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "commit is not allowed") {
		t.Fatalf("commit of a plan whose VMs are protected: %v", err)
	}
	jobs, _ := rc.ListJobs(ctx, &ferryv1.ListJobsRequest{})
	if len(jobs.GetJobs()) != 0 {
		t.Fatalf("%d jobs after refused plan runs", len(jobs.GetJobs()))
	}
}
