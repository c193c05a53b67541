package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/ferrydr/ferry/pkg/cli"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// groupCmd runs "ferryctl group ...".
func groupCmd(ctx context.Context, ps server, args []string) error {
	rc := ps.rc
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
