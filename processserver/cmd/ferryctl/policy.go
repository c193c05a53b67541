package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/ferrydr/ferry/pkg/retention"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// policyCmd runs "ferryctl policy ...".
func policyCmd(ctx context.Context, ps server, args []string) error {
	rc := ps.rc
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
