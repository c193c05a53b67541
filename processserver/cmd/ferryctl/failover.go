package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/ferrydr/ferry"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// failoverCmd fails a VM over: test, planned or unplanned.
func failoverCmd(ctx context.Context, ps server, args []string) error {
	fs := flags("failover")
	vm := vmFlag(fs)
	typ := fs.String("type", "", "failover type: test, planned or unplanned")
	point := fs.String("point", ferry.PointLatest, "recovery point: latest, latest-processed, latest-app or an ID")
	network := fs.String("network", "", "test failover: the isolated network for the test VM (default test-VM)")
	shutdown := fs.Bool("shutdown", false, "unplanned failover: try to shut the source down and sync first")
	fs.Parse(args)
	t := map[string]ferryv1.FailoverType{"test": ferryv1.FailoverType_FAILOVER_TYPE_TEST, "planned": ferryv1.FailoverType_FAILOVER_TYPE_PLANNED,
		"unplanned": ferryv1.FailoverType_FAILOVER_TYPE_UNPLANNED}[*typ]
	if t == ferryv1.FailoverType_FAILOVER_TYPE_UNSPECIFIED || *vm == "" {
		return fmt.Errorf("--vm and --type test|planned|unplanned are required")
	}
	return printJob(ps.rc.Failover(ctx, &ferryv1.FailoverRequest{Vm: *vm, Type: t, Point: *point, Network: *network, Shutdown: *shutdown}))
}

// changePointCmd recreates a failed-over VM from another point.
func changePointCmd(ctx context.Context, ps server, args []string) error {
	fs := flags("change-point")
	vm := vmFlag(fs)
	point := fs.String("point", ferry.PointLatest, "recovery point: latest, latest-processed, latest-app or an ID")
	fs.Parse(args)
	return printJob(ps.rc.ChangePoint(ctx, &ferryv1.ChangePointRequest{Vm: *vm, Point: *point}))
}

// commitCmd finalizes a failover or a failback.
func commitCmd(ctx context.Context, ps server, args []string) error {
	fs := flags("commit")
	vm := vmFlag(fs)
	fs.Parse(args)
	return printJob(ps.rc.Commit(ctx, &ferryv1.VMRequest{Vm: *vm}))
}

// cleanupTestCmd deletes a test failover's VM.
func cleanupTestCmd(ctx context.Context, ps server, args []string) error {
	fs := flags("cleanup-test")
	vm := vmFlag(fs)
	fs.Parse(args)
	return printJob(ps.rc.CleanupTest(ctx, &ferryv1.VMRequest{Vm: *vm}))
}

// syncFlag adds --sync.
func syncFlag(fs *flag.FlagSet) *string {
	return fs.String("sync", "", "before (the default: copy while the VM runs, final delta at downtime) or during (failover only: nothing moves before the failback, then the whole disks after shutdown, without checksums; a VM reprotected so fails back so)")
}

// reprotectCmd starts replication the other way.
func reprotectCmd(ctx context.Context, ps server, args []string) error {
	fs := flags("reprotect")
	vm := vmFlag(fs)
	location := fs.String("location", string(ferry.LocationOriginal), "original (send only what differs) or alternate (new disks, send everything)")
	sync := syncFlag(fs)
	fs.Parse(args)
	return printJob(ps.rc.Reprotect(ctx, &ferryv1.ReprotectRequest{Vm: *vm, Location: *location, Sync: *sync}))
}

// failbackCmd fails a reprotected VM back to the primary site.
func failbackCmd(ctx context.Context, ps server, args []string) error {
	fs := flags("failback")
	vm := vmFlag(fs)
	point := fs.String("point", ferry.PointLatest, "latest or latest-app")
	sync := syncFlag(fs)
	fs.Parse(args)
	return printJob(ps.rc.Failback(ctx, &ferryv1.FailbackRequest{Vm: *vm, Sync: *sync, Point: *point}))
}
