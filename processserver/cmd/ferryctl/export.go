package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/processserver/client"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// exportCmd writes one disk of a point to an image file, or serves it
// over NBD.
func exportCmd() *cobra.Command {
	c := command("export --vm NAME --disk NAME (--out FILE | --nbd) [--point P]",
		"write one disk of a point to an image file, or serve it over NBD and print its URI")
	c.Long = `Writes one disk of a recovery point to a new image file (sparse; every
chunk's checksum is checked), with a progress bar on a terminal. With --nbd
it serves the disk over NBD instead and prints the URI (--writable:
copy-on-write, the point never changes).`
	fs := c.Flags()
	vm := vmFlag(fs)
	point := fs.String("point", ferry.PointLatestProcessed, "recovery point: latest-processed, latest or an ID")
	disk := fs.String("disk", "", "disk name")
	out := fs.String("out", "", "image file to write (created, mode 0600; an existing file only with --force)")
	force := fs.Bool("force", false, "replace an existing --out file")
	overNBD := fs.Bool("nbd", false, "serve over NBD instead of writing a file")
	writable := fs.Bool("writable", false, "with --nbd: copy-on-write instead of read-only")
	c.RunE = run(func(ctx context.Context, ps server, _ []string) error {
		if *overNBD {
			if err := need("vm", vm, "disk", disk); err != nil {
				return err
			}
			resp, err := ps.rc.ExportNBD(ctx, &ferryv1.ExportNBDRequest{Vm: *vm, Point: *point, Disk: *disk, Writable: *writable})
			if err != nil {
				return err
			}
			fmt.Printf("%s\n(export %s, point %d)\n", resp.GetUri(), resp.GetName(), resp.GetPointId())
			return nil
		}
		if err := need("vm", vm, "disk", disk, "out", out); err != nil {
			return err
		}
		return export(ctx, ps.conn, *vm, *point, *disk, *out, *force)
	})
	return c
}

func exportsCmd() *cobra.Command {
	c := command("exports", "list the NBD exports and the scratch quota's use")
	c.RunE = run(func(ctx context.Context, ps server, _ []string) error {
		resp, err := ps.rc.ListExports(ctx, &ferryv1.ListExportsRequest{})
		if err != nil {
			return err
		}
		return emit(resp, func() error { return listExports(resp) })
	})
	return c
}

func unexportCmd() *cobra.Command {
	c := &cobra.Command{Use: "unexport NAME", Short: "stop serving an NBD export ('ferryctl exports' lists them)", Args: cli.ExactArgs(1)}
	c.RunE = run(func(ctx context.Context, ps server, args []string) error {
		_, err := ps.rc.UnexportNBD(ctx, &ferryv1.UnexportNBDRequest{Name: args[0]})
		return err
	})
	return c
}

func verifyCmd() *cobra.Command {
	c := command("verify --vm NAME [--point P]", "re-read and check every block a point uses; without --point scrub the VM's whole journal")
	c.Long = `With --point, re-reads and checks every block the point uses. Without it,
scrubs the VM's whole journal: reports every corrupt record and the points
it makes unusable, and asks the agent to send those blocks again. Exits 1
when anything is corrupt.`
	vm := vmFlag(c.Flags())
	point := c.Flags().String("point", ferry.PointLatestProcessed, "recovery point: latest-processed, latest or an ID (without it: scrub the whole journal)")
	c.RunE = run(func(ctx context.Context, ps server, _ []string) error {
		if err := need("vm", vm); err != nil {
			return err
		}
		if !c.Flags().Changed("point") {
			return scrub(ctx, ps.rc, *vm)
		}
		return verify(ctx, ps.rc, *vm, *point)
	})
	return c
}

func export(ctx context.Context, conn *grpc.ClientConn, vm, point, disk, out string, force bool) error {
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
	var shown *progressDevice
	res, err := client.ExportDisk(ctx, conn, vm, point, disk, func(size int64) (blockdev.Device, error) {
		var err error
		if f, err = blockdev.CreateNewFile(out, size); err != nil {
			return nil, err
		}
		shown = &progressDevice{Device: f, p: newProgress("export "+disk, size)}
		return shown, nil
	})
	if f != nil {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return err
	}
	shown.p.update(res.DiskSize)
	fmt.Printf("exported vm %s disk %s point %d to %s: %d bytes (%d of data) in %v\n",
		vm, disk, res.PointID, out, res.DiskSize, res.Bytes, time.Since(start).Round(time.Millisecond))
	return nil
}

func listExports(resp *ferryv1.ListExportsResponse) error {
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
	resp, err := rc.VerifyPoint(ctx, &ferryv1.VerifyPointRequest{Vm: vm, Point: point})
	if err != nil {
		return err
	}
	fmt.Printf("vm %s point %d: ok, %d writes (%d bytes) checked\n", vm, resp.GetPointId(), resp.GetWritesChecked(), resp.GetBytesChecked())
	return nil
}

// scrub checks a VM's whole journal; corruption is an error (exit 1).
func scrub(ctx context.Context, rc ferryv1.RecoveryClient, vm string) error {
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

// progressDevice shows an export's progress as its chunks, in offset
// order, are written.
type progressDevice struct {
	blockdev.Device
	p *progress
}

func (d *progressDevice) WriteAt(ctx context.Context, b []byte, off int64) (int, error) {
	n, err := d.Device.WriteAt(ctx, b, off)
	d.p.update(off + int64(n))
	return n, err
}
