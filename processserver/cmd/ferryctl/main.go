// Command ferryctl is the operator's client of a Ferry process server.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/processserver"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

const usage = `
ferryctl talks to a Ferry process server.

Usage:
  ferryctl --ps ADDR vms                                  list protected VMs
  ferryctl --ps ADDR points --vm NAME                     list a VM's recovery points
  ferryctl --ps ADDR export --vm NAME --disk NAME --out FILE [--point P]
                                                          write one disk of a point to an image file
  ferryctl --ps ADDR verify --vm NAME [--point P]         re-read and check every block a point uses

A point P is latest-processed (the newest point, the default), latest (first
cut a point at the end of everything received) or a point ID from 'points'.
`

func main() {
	global := flag.NewFlagSet("ferryctl", flag.ExitOnError)
	ps := global.String("ps", "127.0.0.1:7400", "process server address")
	timeout := global.Duration("timeout", 0, "give up after this long (0: no limit)")
	global.Usage = func() { cli.Usage(usage) }
	global.Parse(os.Args[1:])
	args := global.Args()
	if len(args) == 0 {
		cli.Usage(usage)
	}
	conn, err := grpc.NewClient(*ps, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		cli.Fatal("ferryctl", err)
	}
	defer conn.Close()
	ctx, stop := cli.SignalContext()
	defer stop()
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	cmd, rest := args[0], args[1:]
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	vm := fs.String("vm", "", "VM name")
	point := fs.String("point", processserver.PointLatestProcessed, "recovery point: latest-processed, latest or an ID")
	disk := fs.String("disk", "", "disk name")
	out := fs.String("out", "", "image file to write (created or truncated)")
	fs.Parse(rest)
	rc := ferryv1.NewRecoveryClient(conn)
	switch cmd {
	case "vms":
		err = listVMs(ctx, rc)
	case "points":
		err = listPoints(ctx, rc, *vm)
	case "export":
		err = export(ctx, conn, *vm, *point, *disk, *out)
	case "verify":
		err = verify(ctx, rc, *vm, *point)
	default:
		cli.Usage(usage)
	}
	if err != nil {
		cli.Fatal("ferryctl "+cmd, err)
	}
}

func listVMs(ctx context.Context, rc ferryv1.RecoveryClient) error {
	resp, err := rc.ListVMs(ctx, &ferryv1.ListVMsRequest{})
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "VM\tDISKS\tEPOCH\tDURABLE SEQ\tCONSISTENT\tPOINTS\tRPO\tRATIO")
	for _, vm := range resp.GetVms() {
		rpo := "-"
		if ns := vm.GetLatestPointUnixNano(); ns != 0 {
			rpo = time.Since(time.Unix(0, ns)).Round(time.Second).String()
		}
		ratio := "-"
		if vm.GetStoredBytes() > 0 {
			ratio = fmt.Sprintf("%.2f", float64(vm.GetLogicalBytes())/float64(vm.GetStoredBytes()))
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%v\t%d\t%s\t%s\n", vm.GetName(), len(vm.GetDisks()), vm.GetEpoch(), vm.GetDurableSeq(), vm.GetConsistent(), vm.GetPointCount(), rpo, ratio)
	}
	return w.Flush()
}

func listPoints(ctx context.Context, rc ferryv1.RecoveryClient, vm string) error {
	if vm == "" {
		return fmt.Errorf("--vm is required")
	}
	resp, err := rc.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: vm})
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tTIME\tAGE\tCONSISTENCY\tTAG")
	for _, p := range resp.GetPoints() {
		t := time.Unix(0, p.GetTimeUnixNano())
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", p.GetId(), t.UTC().Format(time.RFC3339), time.Since(t).Round(time.Second), consistency(p.GetConsistency()), p.GetTag())
	}
	return w.Flush()
}

func consistency(c ferryv1.Consistency) string {
	switch c {
	case ferryv1.Consistency_CONSISTENCY_APP:
		return "app"
	case ferryv1.Consistency_CONSISTENCY_CRASH:
		return "crash"
	}
	return "?"
}

func export(ctx context.Context, conn *grpc.ClientConn, vm, point, disk, out string) error {
	if vm == "" || disk == "" || out == "" {
		return fmt.Errorf("--vm, --disk and --out are required")
	}
	start := time.Now()
	var f *blockdev.File
	res, err := processserver.ExportDisk(ctx, conn, vm, point, disk, func(size int64) (blockdev.Device, error) {
		var err error
		f, err = blockdev.CreateFile(out, size)
		return f, err
	})
	if f != nil {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return err
	}
	fmt.Printf("exported vm %s disk %s point %d to %s: %d bytes (%d of data) in %v\n",
		vm, disk, res.PointID, out, res.DiskSize, res.Bytes, time.Since(start).Round(time.Millisecond))
	return nil
}

func verify(ctx context.Context, rc ferryv1.RecoveryClient, vm, point string) error {
	if vm == "" {
		return fmt.Errorf("--vm is required")
	}
	resp, err := rc.VerifyPoint(ctx, &ferryv1.VerifyPointRequest{Vm: vm, Point: point})
	if err != nil {
		return err
	}
	fmt.Printf("vm %s point %d: ok, %d writes (%d bytes) checked\n", vm, resp.GetPointId(), resp.GetWritesChecked(), resp.GetBytesChecked())
	return nil
}
