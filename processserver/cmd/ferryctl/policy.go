package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/pkg/retention"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

func policyCmd() *cobra.Command {
	c := cli.Group(&cobra.Command{Use: "policy", Short: "replication policies: retention, point frequencies, RPO threshold"})
	policies := func(ctx context.Context, ps server) (*ferryv1.ListPoliciesResponse, func(string) (*ferryv1.Policy, error), error) {
		resp, err := ps.rc.ListPolicies(ctx, &ferryv1.ListPoliciesRequest{})
		if err != nil {
			return nil, nil, err
		}
		return resp, func(n string) (*ferryv1.Policy, error) {
			for _, p := range resp.GetPolicies() {
				if p.GetName() == n {
					return p, nil
				}
			}
			return nil, fmt.Errorf("no policy named %q", n)
		}, nil
	}

	list := command("list", "policies with their VMs")
	list.RunE = run(func(ctx context.Context, ps server, _ []string) error {
		resp, _, err := policies(ctx, ps)
		if err != nil {
			return err
		}
		return emit(resp, func() error {
			w := table("POLICY\tRETENTION\tCRASH\tAPP\tRPO-THRESHOLD\tEDITABLE\tVMS")
			for _, p := range resp.GetPolicies() {
				fmt.Fprintf(w, "%s\t%v\t%v\t%s\t%v\t%v\t%s\n", p.GetName(), secs(p.GetRetentionSeconds()), secs(p.GetCrashIntervalSeconds()),
					strings.ReplaceAll(offIfZero(p.GetAppIntervalSeconds()), " ", "-"), secs(p.GetRpoThresholdSeconds()), !p.GetBuiltin(), strings.Join(p.GetVms(), ","))
			}
			return w.Flush()
		})
	})

	show := &cobra.Command{Use: "show NAME", Short: "one policy", Args: cli.ExactArgs(1)}
	show.RunE = run(func(ctx context.Context, ps server, args []string) error {
		_, find, err := policies(ctx, ps)
		if err != nil {
			return err
		}
		p, err := find(args[0])
		if err != nil {
			return err
		}
		return emit(p, func() error {
			fmt.Printf("policy %s\n  retention            %v\n  crash-consistent     every %v\n  app-consistent       %s\n  RPO threshold        %v\n  editable             %v\n  VMs                  %s\n",
				p.GetName(), secs(p.GetRetentionSeconds()), secs(p.GetCrashIntervalSeconds()), offIfZero(p.GetAppIntervalSeconds()),
				secs(p.GetRpoThresholdSeconds()), !p.GetBuiltin(), strings.Join(p.GetVms(), ", "))
			return nil
		})
	})

	edit := &cobra.Command{Use: "edit NAME [flags]", Short: "change a policy, or create one from the default's values (the failback policy cannot be edited)", Args: cli.ExactArgs(1)}
	keep := edit.Flags().Duration("retention", 0, "keep recovery points this long (e.g. 24h, 72h)")
	crash := edit.Flags().Duration("crash-interval", 0, "crash-consistent point frequency")
	app := edit.Flags().Duration("app-interval", -1, "app-consistent point frequency (0 turns them off)")
	rpo := edit.Flags().Duration("rpo-threshold", 0, "alert when a VM's RPO is above this")
	edit.RunE = run(func(ctx context.Context, ps server, args []string) error {
		_, find, err := policies(ctx, ps)
		if err != nil {
			return err
		}
		p, err := find(args[0])
		if err != nil {
			if p, err = find(retention.DefaultName); err != nil {
				return err
			}
			p.Name = args[0]
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
		if _, err := ps.rc.PutPolicy(ctx, p); err != nil {
			return err
		}
		fmt.Printf("policy %s saved\n", p.GetName())
		return nil
	})

	attach := command("attach --vm NAME --policy NAME", "make a VM follow a policy")
	vm := vmFlag(attach.Flags())
	attachTo := attach.Flags().String("policy", "", "the policy")
	attach.RunE = run(func(ctx context.Context, ps server, _ []string) error {
		if err := need("vm", vm, "policy", attachTo); err != nil {
			return err
		}
		if _, err := ps.rc.AttachPolicy(ctx, &ferryv1.AttachPolicyRequest{Vm: *vm, Policy: *attachTo}); err != nil {
			return err
		}
		fmt.Printf("vm %s follows policy %s\n", *vm, *attachTo)
		return nil
	})
	c.AddCommand(list, show, edit, attach)
	return c
}

func secs(s int64) time.Duration { return time.Duration(s) * time.Second }

func offIfZero(s int64) string {
	if s == 0 {
		return "off"
	}
	return "every " + secs(s).String()
}
