package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/processserver/client"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// exportCmd writes one disk of a point to an image file, or serves it
// over NBD.
func exportCmd(ctx context.Context, ps server, args []string) error {
	fs := flags("export")
	vm := vmFlag(fs)
	point := fs.String("point", ferry.PointLatestProcessed, "recovery point: latest-processed, latest or an ID")
	disk := fs.String("disk", "", "disk name")
	out := fs.String("out", "", "image file to write (created, mode 0600; an existing file only with --force)")
	force := fs.Bool("force", false, "replace an existing --out file")
	overNBD := fs.Bool("nbd", false, "serve over NBD instead of writing a file")
	writable := fs.Bool("writable", false, "with --nbd: copy-on-write instead of read-only")
	fs.Parse(args)
	if *overNBD {
		resp, err := ps.rc.ExportNBD(ctx, &ferryv1.ExportNBDRequest{Vm: *vm, Point: *point, Disk: *disk, Writable: *writable})
		if err != nil {
			return err
		}
		fmt.Printf("%s\n(export %s, point %d)\n", resp.GetUri(), resp.GetName(), resp.GetPointId())
		return nil
	}
	return export(ctx, ps.conn, *vm, *point, *disk, *out, *force)
}

// exportsCmd lists the NBD exports.
func exportsCmd(ctx context.Context, ps server, args []string) error {
	flags("exports").Parse(args)
	return listExports(ctx, ps.rc)
}

// unexportCmd stops serving an NBD export.
func unexportCmd(ctx context.Context, ps server, args []string) error {
	fs := flags("unexport")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("unexport wants one export name (ferryctl exports lists them)")
	}
	_, err := ps.rc.UnexportNBD(ctx, &ferryv1.UnexportNBDRequest{Name: fs.Arg(0)})
	return err
}

// verifyCmd re-reads a point's blocks, or scrubs the VM's whole journal
// when no point is named.
func verifyCmd(ctx context.Context, ps server, args []string) error {
	fs := flags("verify")
	vm := vmFlag(fs)
	point := fs.String("point", ferry.PointLatestProcessed, "recovery point: latest-processed, latest or an ID (without it: scrub the whole journal)")
	fs.Parse(args)
	pointSet := false
	fs.Visit(func(f *flag.Flag) { pointSet = pointSet || f.Name == "point" })
	if !pointSet {
		return scrub(ctx, ps.rc, *vm)
	}
	return verify(ctx, ps.rc, *vm, *point)
}

func export(ctx context.Context, conn *grpc.ClientConn, vm, point, disk, out string, force bool) error {
	if vm == "" || disk == "" || out == "" {
		return fmt.Errorf("--vm, --disk and --out are required")
	}
	if fi, err := os.Lstat(out); err == nil {
		if !force {
			return fmt.Errorf("%s exists: pass --force to replace it", out)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file (%v): not replaced", out, fi.Mode().Type())
		}
		// Removed, then created anew: a link planted meanwhile is not
		// followed.
		if err := os.Remove(out); err != nil {
			return err
		}
	}
	start := time.Now()
	var f *blockdev.File
	res, err := client.ExportDisk(ctx, conn, vm, point, disk, func(size int64) (blockdev.Device, error) {
		var err error
		f, err = blockdev.CreateNewFile(out, size)
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

func listExports(ctx context.Context, rc ferryv1.RecoveryClient) error {
	resp, err := rc.ListExports(ctx, &ferryv1.ListExportsRequest{})
	if err != nil {
		return err
	}
	fmt.Printf("%-14s %-8s %6s  %-13s %-20s %s\n", "VM", "DISK", "POINT", "KIND", "CREATED", "NAME / URI")
	for _, e := range resp.GetExports() {
		kind := "read-only"
		switch {
		case e.GetTest():
			kind = "test failover"
		case e.GetWritable():
			kind = "copy-on-write"
		}
		fmt.Printf("%-14s %-8s %6d  %-13s %-20s %s\n%63s%s\n", e.GetVm(), e.GetDisk(), e.GetPointId(), kind,
			time.Unix(0, e.GetCreatedUnixNano()).UTC().Format(time.RFC3339), e.GetName(), "", e.GetUri())
	}
	fmt.Printf("scratch: %d of %d bytes used by writable exports\n", resp.GetScratchUsed(), resp.GetScratchQuota())
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

// scrub checks a VM's whole journal; corruption is an error (exit 1).
func scrub(ctx context.Context, rc ferryv1.RecoveryClient, vm string) error {
	if vm == "" {
		return fmt.Errorf("--vm is required")
	}
	r, err := rc.Scrub(ctx, &ferryv1.ScrubRequest{Vm: vm})
	if err != nil {
		return err
	}
	fmt.Printf("vm %s: %d records, %d writes (%d bytes) and %d points checked\n", vm, r.GetRecordsChecked(), r.GetWritesChecked(), r.GetBytesChecked(), r.GetPointsChecked())
	for _, c := range r.GetCorrupt() {
		where := "location unknown (metadata corrupt)"
		if c.GetDisk() >= 0 {
			where = fmt.Sprintf("disk %d, offset %d, %d bytes", c.GetDisk(), c.GetOffset(), c.GetLength())
		}
		fmt.Printf("CORRUPT record %d: %s: %s; unusable points: %v\n", c.GetSeq(), where, safe(c.GetError()), c.GetPoints())
	}
	for _, p := range r.GetBadPoints() {
		fmt.Printf("CORRUPT point %d: its stored entry fails its checksum\n", p)
	}
	if n := len(r.GetCorrupt()) + len(r.GetBadPoints()); n > 0 {
		if r.GetResyncRequested() {
			fmt.Println("the agent was asked to send the corrupt blocks again; new points will read good data")
		} else {
			fmt.Printf("no resync: %s\n", r.GetResyncError())
		}
		return fmt.Errorf("%d corrupt entries in vm %s's journal", n, vm)
	}
	fmt.Println("ok: no corruption")
	return nil
}
