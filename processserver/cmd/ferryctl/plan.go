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
	"github.com/ferrydr/ferry/pkg/plan"
	"github.com/ferrydr/ferry/pkg/wire"
	"github.com/ferrydr/ferry/processserver/client"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// planCmd runs "ferryctl plan ...".
func planCmd(ctx context.Context, ps server, args []string) error {
	rc := ps.rc
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
