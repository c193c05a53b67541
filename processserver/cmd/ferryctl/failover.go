package main

import (
	"context"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/cli"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// failoverCmd fails a VM over: test, planned or unplanned.
func failoverCmd() *cobra.Command {
	c := command("failover --type test|planned|unplanned --vm NAME [--point P] [--network NAME] [--shutdown]",
		"fail a VM over (test: on an isolated network); prints the job and exits 1 if it failed")
	fs := c.Flags()
	vm := vmFlag(fs)
	typ := fs.String("type", "", "failover type: test, planned or unplanned")
	point := fs.String("point", ferry.PointLatest, "recovery point: latest, latest-processed, latest-app or an ID")
	network := fs.String("network", "", "test failover: the isolated network for the test VM (default test-VM)")
	shutdown := fs.Bool("shutdown", false, "unplanned failover: try to shut the source down and sync first")
	c.RunE = run(func(ctx context.Context, ps server, _ []string) error {
		t := map[string]ferryv1.FailoverType{"test": ferryv1.FailoverType_FAILOVER_TYPE_TEST, "planned": ferryv1.FailoverType_FAILOVER_TYPE_PLANNED,
			"unplanned": ferryv1.FailoverType_FAILOVER_TYPE_UNPLANNED}[*typ]
		if t == ferryv1.FailoverType_FAILOVER_TYPE_UNSPECIFIED || *vm == "" {
			return cli.Usagef("--vm and --type test|planned|unplanned are required")
		}
		return printJob(ps.rc.Failover(ctx, &ferryv1.FailoverRequest{Vm: *vm, Type: t, Point: *point, Network: *network, Shutdown: *shutdown}))
	})
	return c
}

// vmJob returns a subcommand that runs one job on --vm and prints it, and
// its flags, for the caller's others.
func vmJob(use, short string, call func(ctx context.Context, ps server, vm string) (*ferryv1.Job, error)) (*cobra.Command, *pflag.FlagSet) {
	c := command(use, short)
	vm := vmFlag(c.Flags())
	c.RunE = run(func(ctx context.Context, ps server, _ []string) error {
		if err := need("vm", vm); err != nil {
			return err
		}
		return printJob(call(ctx, ps, *vm))
	})
	return c, c.Flags()
}

func changePointCmd() *cobra.Command {
	var point *string
	c, fs := vmJob("change-point --vm NAME --point P", "recreate a failed-over VM from another point", func(ctx context.Context, ps server, vm string) (*ferryv1.Job, error) {
		return ps.rc.ChangePoint(ctx, &ferryv1.ChangePointRequest{Vm: vm, Point: *point})
	})
	point = fs.String("point", ferry.PointLatest, "recovery point: latest, latest-processed, latest-app or an ID")
	return c
}

func commitCmd() *cobra.Command {
	c, _ := vmJob("commit --vm NAME", "finalize a failover (deletes every recovery point)", func(ctx context.Context, ps server, vm string) (*ferryv1.Job, error) {
		return ps.rc.Commit(ctx, &ferryv1.VMRequest{Vm: vm})
	})
	return c
}

func cleanupTestCmd() *cobra.Command {
	c, _ := vmJob("cleanup-test --vm NAME", "delete a test failover's VM", func(ctx context.Context, ps server, vm string) (*ferryv1.Job, error) {
		return ps.rc.CleanupTest(ctx, &ferryv1.VMRequest{Vm: vm})
	})
	return c
}

func syncFlag(fs *pflag.FlagSet) *string {
	return fs.String("sync", "", "before (the default: copy while the VM runs, final delta at downtime) or during (failover only: nothing moves before the failback, then the whole disks after shutdown, without checksums; a VM reprotected so fails back so)")
}

func reprotectCmd() *cobra.Command {
	var location, sync *string
	c, fs := vmJob("reprotect --vm NAME [--location original|alternate] [--sync before|during]",
		"replicate the other way (after a committed failover to the master target; after a committed failback back)",
		func(ctx context.Context, ps server, vm string) (*ferryv1.Job, error) {
			return ps.rc.Reprotect(ctx, &ferryv1.ReprotectRequest{Vm: vm, Location: *location, Sync: *sync})
		})
	location = fs.String("location", string(ferry.LocationOriginal), "original (send only what differs) or alternate (new disks, send everything)")
	sync = syncFlag(fs)
	return c
}

func failbackCmd() *cobra.Command {
	var point, sync *string
	c, fs := vmJob("failback --vm NAME [--sync before|during] [--point latest|latest-app]", "fail a reprotected VM back to the primary site",
		func(ctx context.Context, ps server, vm string) (*ferryv1.Job, error) {
			return ps.rc.Failback(ctx, &ferryv1.FailbackRequest{Vm: vm, Sync: *sync, Point: *point})
		})
	point = fs.String("point", ferry.PointLatest, "latest or latest-app")
	sync = syncFlag(fs)
	return c
}
