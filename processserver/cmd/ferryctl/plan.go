package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/pkg/plan"
	"github.com/ferrydr/ferry/pkg/wire"
	"github.com/ferrydr/ferry/processserver/client"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// planCmd runs "ferryctl plan ...".
func planCmd() *cobra.Command {
	c := cli.Group(&cobra.Command{Use: "plan", Short: "recovery plans: groups of VMs failed over in order, with actions between them"})

	list := command("list", "list recovery plans")
	list.RunE = run(func(ctx context.Context, ps server, _ []string) error {
		resp, err := ps.rc.ListPlans(ctx, &ferryv1.ListPlansRequest{})
		if err != nil {
			return err
		}
		return emit(resp, func() error {
			for _, p := range resp.GetPlans() {
				fmt.Printf("%s  %d groups, %d VMs\n", p.GetName(), len(p.GetGroups()), len(wire.Plan(p).VMs()))
			}
			return nil
		})
	})

	show := &cobra.Command{Use: "show NAME", Short: "one recovery plan", Args: cli.ExactArgs(1)}
	show.RunE = run(func(ctx context.Context, ps server, args []string) error {
		resp, err := ps.rc.ListPlans(ctx, &ferryv1.ListPlansRequest{})
		if err != nil {
			return err
		}
		for _, p := range resp.GetPlans() {
			if p.GetName() == args[0] {
				return emit(p, func() error { printPlan(p); return nil })
			}
		}
		return fmt.Errorf("no plan named %q", args[0])
	})

	put := command("put --file PLAN.json", "create or change a recovery plan")
	file := put.Flags().String("file", "", "the plan as JSON")
	put.RunE = run(func(ctx context.Context, ps server, _ []string) error {
		if err := need("file", file); err != nil {
			return err
		}
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
		if _, err := ps.rc.PutPlan(ctx, wire.PlanProto(p)); err != nil {
			return err
		}
		fmt.Printf("plan %s saved: %d groups\n", p.Name, len(p.Groups))
		return nil
	})

	del := &cobra.Command{Use: "delete NAME", Short: "delete a recovery plan", Args: cli.ExactArgs(1)}
	del.RunE = run(func(ctx context.Context, ps server, args []string) error {
		_, err := ps.rc.DeletePlan(ctx, &ferryv1.DeletePlanRequest{Name: args[0]})
		return err
	})

	runPlan := &cobra.Command{Use: "run NAME --op OP [flags]", Short: "run an operation on every VM of a plan, group by group", Args: cli.ExactArgs(1),
		Long: `OP: test-failover, planned-failover, unplanned-failover, change-point,
commit, cleanup-test, reprotect or failback. P: latest, latest-processed,
latest-app, latest-multivm-processed or latest-multivm-app (custom points
are refused for plans). The plan's job is followed until it ends or waits
for a manual step ('ferryctl plan resume').`}
	op := runPlan.Flags().String("op", "", "test-failover, planned-failover, unplanned-failover, change-point, commit, cleanup-test, reprotect or failback")
	point := runPlan.Flags().String("point", "", "latest, latest-processed, latest-app, latest-multivm-processed or latest-multivm-app (failback: latest or latest-app)")
	location := runPlan.Flags().String("location", "", "reprotect: original (default) or alternate")
	syncMode := runPlan.Flags().String("sync", "", "failback: before (default: synchronize before failover) or during (failover only)")
	network := runPlan.Flags().String("network", "", "test-failover: the isolated network")
	shutdown := runPlan.Flags().Bool("shutdown", false, "unplanned-failover: try to shut the sources down first")
	runPlan.RunE = run(func(ctx context.Context, ps server, args []string) error {
		if err := need("op", op); err != nil {
			return err
		}
		j, err := ps.rc.RunPlan(ctx, &ferryv1.RunPlanRequest{Plan: args[0], Operation: *op, Point: *point, Network: *network, Shutdown: *shutdown,
			Location: *location, Sync: *syncMode})
		if err != nil {
			return err
		}
		return followPlan(ctx, ps.rc, j.GetId())
	})

	resume := &cobra.Command{Use: "resume NAME", Short: "go on after a plan's manual step", Args: cli.ExactArgs(1)}
	resume.RunE = run(func(ctx context.Context, ps server, args []string) error {
		j, err := ps.rc.ResumePlan(ctx, &ferryv1.ResumePlanRequest{Plan: args[0]})
		if err != nil {
			return err
		}
		return followPlan(ctx, ps.rc, j.GetId())
	})
	c.AddCommand(list, show, put, del, runPlan, resume)
	return c
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
