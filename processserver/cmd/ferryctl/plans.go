package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/pkg/plan"
	"github.com/ferrydr/ferry/pkg/retention"
	"github.com/ferrydr/ferry/pkg/wire"
	"github.com/ferrydr/ferry/processserver/client"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// policyCmd runs "ferryctl policy ...".
func policyCmd(ctx context.Context, rc ferryv1.RecoveryClient, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("policy wants list, show NAME, edit NAME [flags] or attach --vm NAME --policy NAME")
	}
	fs := flag.NewFlagSet("policy "+args[0], flag.ExitOnError)
	name, flags := positional(args[1:])
	keep := fs.Duration("retention", 0, "keep recovery points this long (e.g. 24h, 72h)")
	crash := fs.Duration("crash-interval", 0, "crash-consistent point frequency")
	app := fs.Duration("app-interval", -1, "app-consistent point frequency (0 turns them off)")
	rpo := fs.Duration("rpo-threshold", 0, "alert when a VM's RPO is above this")
	vm := fs.String("vm", "", "attach: the VM")
	attachTo := fs.String("policy", "", "attach: the policy")
	fs.Parse(flags)
	resp, err := rc.ListPolicies(ctx, &ferryv1.ListPoliciesRequest{})
	if err != nil {
		return err
	}
	find := func(n string) (*ferryv1.Policy, error) {
		for _, p := range resp.GetPolicies() {
			if p.GetName() == n {
				return p, nil
			}
		}
		return nil, fmt.Errorf("no policy named %q", n)
	}
	switch args[0] {
	case "list":
		w := table("POLICY\tRETENTION\tCRASH\tAPP\tRPO THRESHOLD\tEDITABLE\tVMS")
		for _, p := range resp.GetPolicies() {
			fmt.Fprintf(w, "%s\t%v\t%v\t%s\t%v\t%v\t%s\n", p.GetName(), secs(p.GetRetentionSeconds()), secs(p.GetCrashIntervalSeconds()),
				offIfZero(p.GetAppIntervalSeconds()), secs(p.GetRpoThresholdSeconds()), !p.GetBuiltin(), strings.Join(p.GetVms(), ","))
		}
		return w.Flush()
	case "show":
		p, err := find(name)
		if err != nil {
			return err
		}
		fmt.Printf("policy %s\n  retention            %v\n  crash-consistent     every %v\n  app-consistent       %s\n  RPO threshold        %v\n  editable             %v\n  VMs                  %s\n",
			p.GetName(), secs(p.GetRetentionSeconds()), secs(p.GetCrashIntervalSeconds()), offIfZero(p.GetAppIntervalSeconds()),
			secs(p.GetRpoThresholdSeconds()), !p.GetBuiltin(), strings.Join(p.GetVms(), ", "))
		return nil
	case "edit":
		// Edit an existing policy, or create one from the default's values.
		p, err := find(name)
		if err != nil {
			if p, err = find(retention.DefaultName); err != nil {
				return err
			}
			p.Name = name
		}
		if *keep != 0 {
			p.RetentionSeconds = int64(*keep / time.Second)
		}
		if *crash != 0 {
			p.CrashIntervalSeconds = int64(*crash / time.Second)
		}
		if *app >= 0 {
			p.AppIntervalSeconds = int64(*app / time.Second)
		}
		if *rpo != 0 {
			p.RpoThresholdSeconds = int64(*rpo / time.Second)
		}
		if _, err := rc.PutPolicy(ctx, p); err != nil {
			return err
		}
		fmt.Printf("policy %s saved\n", p.GetName())
		return nil
	case "attach":
		if *vm == "" || *attachTo == "" {
			return fmt.Errorf("attach wants --vm and --policy")
		}
		if _, err := rc.AttachPolicy(ctx, &ferryv1.AttachPolicyRequest{Vm: *vm, Policy: *attachTo}); err != nil {
			return err
		}
		fmt.Printf("vm %s follows policy %s\n", *vm, *attachTo)
		return nil
	}
	return fmt.Errorf("policy %s: unknown; want list, show, edit or attach", args[0])
}

// positional splits "NAME --flag ..." into the name and the flags.
func positional(args []string) (string, []string) {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		return args[0], args[1:]
	}
	return "", args
}

func secs(s int64) time.Duration { return time.Duration(s) * time.Second }

func offIfZero(s int64) string {
	if s == 0 {
		return "off"
	}
	return "every " + secs(s).String()
}

// groupCmd runs "ferryctl group ...".
func groupCmd(ctx context.Context, rc ferryv1.RecoveryClient, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("group wants list, create NAME --vm A --vm B ..., delete NAME or point NAME [--app]")
	}
	fs := flag.NewFlagSet("group "+args[0], flag.ExitOnError)
	name, flags := positional(args[1:])
	var vms cli.Repeated
	fs.Var(&vms, "vm", "a member VM; repeat for each")
	crash := fs.Duration("crash-interval", 0, "multi-VM crash-consistent point frequency (0: the first VM's policy)")
	app := fs.Duration("app-interval", 0, "multi-VM app-consistent point frequency (0: the first VM's policy)")
	hold := fs.Duration("hold-timeout", 0, "longest a member's writes are held at a barrier (default 2s)")
	appPoint := fs.Bool("app", false, "point: app-consistent (quiesce every member's application)")
	fs.Parse(flags)
	switch args[0] {
	case "list":
		resp, err := rc.ListGroups(ctx, &ferryv1.ListGroupsRequest{})
		if err != nil {
			return err
		}
		w := table("GROUP\tCRASH\tAPP\tHOLD TIMEOUT\tVMS")
		for _, g := range resp.GetGroups() {
			fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%s\n", g.GetName(), policyOr(g.GetCrashIntervalSeconds()), policyOr(g.GetAppIntervalSeconds()),
				time.Duration(g.GetHoldTimeoutMillis())*time.Millisecond, strings.Join(g.GetVms(), ","))
		}
		return w.Flush()
	case "create":
		g := &ferryv1.ReplicationGroup{Name: name, Vms: vms, CrashIntervalSeconds: int64(*crash / time.Second),
			AppIntervalSeconds: int64(*app / time.Second), HoldTimeoutMillis: hold.Milliseconds()}
		if _, err := rc.PutGroup(ctx, g); err != nil {
			return err
		}
		fmt.Printf("replication group %s: %s\n", g.GetName(), strings.Join(g.GetVms(), ", "))
		return nil
	case "delete":
		_, err := rc.DeleteGroup(ctx, &ferryv1.DeleteGroupRequest{Name: name})
		return err
	case "point":
		res, err := rc.GroupPoint(ctx, &ferryv1.GroupPointRequest{Group: name, App: *appPoint})
		if err != nil {
			return err
		}
		fmt.Printf("multi-VM point %s cut on %s; longest hold %v\n", safe(res.GetTag()), strings.Join(res.GetVms(), ", "), time.Duration(res.GetMaxHoldNanos()))
		return nil
	}
	return fmt.Errorf("group %s: unknown; want list, create, delete or point", args[0])
}

func policyOr(s int64) string {
	if s == 0 {
		return "policy"
	}
	return secs(s).String()
}

// planCmd runs "ferryctl plan ...".
func planCmd(ctx context.Context, rc ferryv1.RecoveryClient, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("plan wants list, show NAME, put --file FILE, delete NAME, run NAME --op OP, or resume NAME")
	}
	fs := flag.NewFlagSet("plan "+args[0], flag.ExitOnError)
	name, flags := positional(args[1:])
	file := fs.String("file", "", "put: the plan as JSON")
	op := fs.String("op", "", "run: test-failover, planned-failover, unplanned-failover, change-point, commit, cleanup-test, reprotect or failback")
	point := fs.String("point", "", "run: latest, latest-processed, latest-app, latest-multivm-processed or latest-multivm-app (failback: latest or latest-app)")
	location := fs.String("location", "", "run reprotect: original (default) or alternate")
	syncMode := fs.String("sync", "", "run failback: before (default: synchronize before failover) or during (failover only)")
	network := fs.String("network", "", "run test-failover: the isolated network")
	shutdown := fs.Bool("shutdown", false, "run unplanned-failover: try to shut the sources down first")
	fs.Parse(flags)
	switch args[0] {
	case "list", "show":
		resp, err := rc.ListPlans(ctx, &ferryv1.ListPlansRequest{})
		if err != nil {
			return err
		}
		for _, p := range resp.GetPlans() {
			if args[0] == "show" && p.GetName() != name {
				continue
			}
			if args[0] == "list" {
				fmt.Printf("%s  %d groups, %d VMs\n", p.GetName(), len(p.GetGroups()), len(wire.Plan(p).VMs()))
				continue
			}
			printPlan(p)
			return nil
		}
		if args[0] == "show" {
			return fmt.Errorf("no plan named %q", name)
		}
		return nil
	case "put":
		raw, err := os.ReadFile(*file)
		if err != nil {
			return err
		}
		var p plan.Plan
		dec := json.NewDecoder(strings.NewReader(string(raw)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			return fmt.Errorf("%s: %w", *file, err)
		}
		if _, err := rc.PutPlan(ctx, wire.PlanProto(p)); err != nil {
			return err
		}
		fmt.Printf("plan %s saved: %d groups\n", p.Name, len(p.Groups))
		return nil
	case "delete":
		_, err := rc.DeletePlan(ctx, &ferryv1.DeletePlanRequest{Name: name})
		return err
	case "run":
		j, err := rc.RunPlan(ctx, &ferryv1.RunPlanRequest{Plan: name, Operation: *op, Point: *point, Network: *network, Shutdown: *shutdown,
			Location: *location, Sync: *syncMode})
		if err != nil {
			return err
		}
		return followPlan(ctx, rc, j.GetId())
	case "resume":
		j, err := rc.ResumePlan(ctx, &ferryv1.ResumePlanRequest{Plan: name})
		if err != nil {
			return err
		}
		return followPlan(ctx, rc, j.GetId())
	}
	return fmt.Errorf("plan %s: unknown; want list, show, put, delete, run or resume", args[0])
}

func printPlan(p *ferryv1.RecoveryPlan) {
	fmt.Printf("plan %s\n", p.GetName())
	if p.GetUploadedBy() != "" {
		fmt.Printf("  uploaded by %s at %s\n", p.GetUploadedBy(), time.Unix(0, p.GetUploadedUnixNano()).UTC().Format(time.RFC3339))
	}
	for i, g := range p.GetGroups() {
		for _, a := range g.GetPre() {
			fmt.Printf("  group %d pre:  %s\n", i+1, actionText(a))
		}
		fmt.Printf("  group %d:      %s (in parallel)\n", i+1, strings.Join(g.GetVms(), ", "))
		for _, a := range g.GetPost() {
			fmt.Printf("  group %d post: %s\n", i+1, actionText(a))
		}
	}
}

func actionText(a *ferryv1.PlanAction) string {
	if a.GetManual() {
		return a.GetName() + " (manual: the plan waits for 'ferryctl plan resume')"
	}
	return fmt.Sprintf("%s: %s", a.GetName(), safe(a.GetCommand()))
}

// followPlan prints a plan job's steps as they end, until it ends or waits
// for an operator.
func followPlan(ctx context.Context, rc ferryv1.RecoveryClient, id uint64) error {
	j, err := client.FollowJob(ctx, rc, id, 0, func(s *ferryv1.JobStep) {
		fmt.Printf("  %-50s %-9s %s\n", s.GetName(), s.GetOutcome(), safe(s.GetDetail()))
	})
	switch {
	case err != nil:
		return err
	case j.GetWaiting() != "":
		fmt.Printf("job %d waits for an operator: %s\n", j.GetId(), safe(j.GetWaiting()))
		return nil
	case ferry.Outcome(j.GetOutcome()) == ferry.OutcomeSucceeded:
		fmt.Printf("job %d: %s of %s succeeded (per-VM jobs %v)\n", j.GetId(), j.GetType(), j.GetVm(), j.GetChildren())
		return nil
	}
	return fmt.Errorf("job %d %s: %s", j.GetId(), j.GetOutcome(), safe(j.GetError()))
}
