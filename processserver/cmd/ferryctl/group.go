package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/pkg/cli"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

func groupCmd() *cobra.Command {
	c := cli.Group(&cobra.Command{Use: "group", Short: "replication groups: VMs whose points are cut together (multi-VM points)"})

	list := command("list", "list replication groups")
	list.RunE = run(func(ctx context.Context, ps server, _ []string) error {
		resp, err := ps.rc.ListGroups(ctx, &ferryv1.ListGroupsRequest{})
		if err != nil {
			return err
		}
		return emit(resp, func() error {
			w := table("GROUP\tCRASH\tAPP\tHOLD-TIMEOUT\tVMS")
			for _, g := range resp.GetGroups() {
				fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%s\n", g.GetName(), policyOr(g.GetCrashIntervalSeconds()), policyOr(g.GetAppIntervalSeconds()),
					time.Duration(g.GetHoldTimeoutMillis())*time.Millisecond, strings.Join(g.GetVms(), ","))
			}
			return w.Flush()
		})
	})

	create := &cobra.Command{Use: "create NAME --vm A --vm B [...]", Short: "create or change a replication group", Args: cli.ExactArgs(1)}
	var vms []string
	create.Flags().StringArrayVar(&vms, "vm", nil, "a member VM; repeat for each")
	crash := create.Flags().Duration("crash-interval", 0, "multi-VM crash-consistent point frequency (0: the first VM's policy)")
	app := create.Flags().Duration("app-interval", 0, "multi-VM app-consistent point frequency (0: the first VM's policy)")
	hold := create.Flags().Duration("hold-timeout", 0, "longest a member's writes are held at a barrier (default 2s)")
	create.RunE = run(func(ctx context.Context, ps server, args []string) error {
		g := &ferryv1.ReplicationGroup{Name: args[0], Vms: vms, CrashIntervalSeconds: int64(*crash / time.Second),
			AppIntervalSeconds: int64(*app / time.Second), HoldTimeoutMillis: hold.Milliseconds()}
		if _, err := ps.rc.PutGroup(ctx, g); err != nil {
			return err
		}
		fmt.Printf("replication group %s: %s\n", g.GetName(), strings.Join(g.GetVms(), ", "))
		return nil
	})

	del := &cobra.Command{Use: "delete NAME", Short: "delete a replication group", Args: cli.ExactArgs(1)}
	del.RunE = run(func(ctx context.Context, ps server, args []string) error {
		_, err := ps.rc.DeleteGroup(ctx, &ferryv1.DeleteGroupRequest{Name: args[0]})
		return err
	})

	point := &cobra.Command{Use: "point NAME [--app]", Short: "cut a multi-VM point now", Args: cli.ExactArgs(1)}
	appPoint := point.Flags().Bool("app", false, "app-consistent (quiesce every member's application)")
	point.RunE = run(func(ctx context.Context, ps server, args []string) error {
		res, err := ps.rc.GroupPoint(ctx, &ferryv1.GroupPointRequest{Group: args[0], App: *appPoint})
		if err != nil {
			return err
		}
		fmt.Printf("multi-VM point %s cut on %s; longest hold %v\n", safe(res.GetTag()), strings.Join(res.GetVms(), ", "), time.Duration(res.GetMaxHoldNanos()))
		return nil
	})
	c.AddCommand(list, create, del, point)
	return c
}

func policyOr(s int64) string {
	if s == 0 {
		return "policy"
	}
	return secs(s).String()
}
