// Command ferryctl is the operator's client of a Ferry process server.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/pkg/tlsca"
	"github.com/ferrydr/ferry/processserver/client"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

const usage = `
ferryctl talks to a Ferry process server.

Usage:
  ferryctl --ps ADDR vms                                  list protected VMs
  ferryctl --ps ADDR points --vm NAME                     list a VM's recovery points
  ferryctl --ps ADDR export --vm NAME --disk NAME --out FILE [--point P]
                                                          write one disk of a point to an image file
  ferryctl --ps ADDR export --nbd --vm NAME --disk NAME [--point P] [--writable]
                                                          serve one disk of a point over NBD and print its URI
                                                          (--writable: copy-on-write, the point never changes)
  ferryctl --ps ADDR agent release --vm NAME               let another agent instance replicate the VM (a moved machine)
  ferryctl --ps ADDR audit [--limit N]                     who changed what, from where: calls, exports, enrollments,
                                                          stream takeovers, failed handshakes
  ferryctl --ps ADDR exports                               list the NBD exports and the scratch quota's use
  ferryctl --ps ADDR unexport NAME                        stop serving an NBD export
  ferryctl --ps ADDR verify --vm NAME [--point P]         re-read and check every block a point uses; without
                                                          --point scrub the VM's whole journal: report every
                                                          corrupt record, the points it makes unusable, and ask
                                                          the agent to send those blocks again
  ferryctl --ps ADDR status [--vm NAME]                   protection state, allowed actions, RPO
  ferryctl --ps ADDR failover --type test|planned|unplanned --vm NAME [--point P]
                                  [--network NAME] [--shutdown]
                                                          fail a VM over (test: on an isolated network)
  ferryctl --ps ADDR change-point --vm NAME --point P     recreate a failed-over VM from another point
  ferryctl --ps ADDR commit --vm NAME                     finalize a failover (deletes every recovery point)
  ferryctl --ps ADDR cleanup-test --vm NAME               delete a test failover's VM
  ferryctl --ps ADDR reprotect --vm NAME [--location original|alternate]
                                                          replicate the other way (after a committed failover
                                                          to the master target; after a committed failback back)
  ferryctl --ps ADDR failback --vm NAME [--sync before|during] [--point latest|latest-app]
                                                          fail a reprotected VM back to the primary site
  ferryctl --ps ADDR events [--vm NAME]                   RPO alerts raised and cleared, failed multi-VM points

Replication policies, groups and recovery plans:
  ferryctl --ps ADDR policy list                          policies with their VMs
  ferryctl --ps ADDR policy show NAME
  ferryctl --ps ADDR policy edit NAME [--retention D] [--crash-interval D] [--app-interval D] [--rpo-threshold D]
                                                          change a policy, or create one from the default's values
                                                          (the failback policy cannot be edited)
  ferryctl --ps ADDR policy attach --vm NAME --policy NAME
  ferryctl --ps ADDR group create NAME --vm A --vm B [...] [--crash-interval D] [--app-interval D] [--hold-timeout D]
                                                          VMs whose points are cut together (multi-VM points)
  ferryctl --ps ADDR group list | delete NAME | point NAME [--app]
  ferryctl --ps ADDR plan put --file PLAN.json            create or change a recovery plan
  ferryctl --ps ADDR plan list | show NAME | delete NAME
  ferryctl --ps ADDR plan run NAME --op OP [--point P] [--network NAME] [--shutdown]
                                                          OP: test-failover, planned-failover, unplanned-failover,
                                                          change-point, commit or cleanup-test; P: latest,
                                                          latest-processed, latest-app, latest-multivm-processed or
                                                          latest-multivm-app (custom points are refused for plans)
  ferryctl --ps ADDR plan resume NAME                     go on after a manual step
  ferryctl --ps ADDR jobs [--vm NAME]                     list jobs
  ferryctl --ps ADDR job ID                               one job with its steps

A point P is latest-processed (the newest point, the default for export),
latest (first process everything received and cut a point at its end; the
default for failover), latest-app (the newest app-consistent point) or a
point ID from 'points'. A planned failover shuts the source down and always
uses its final point; it fails if the source does not shut down. An
unplanned failover with --shutdown tries the same and proceeds either way.
Failover commands print the job and exit 1 if it failed.
`

func main() {
	global := flag.NewFlagSet("ferryctl", flag.ExitOnError)
	ps := global.String("ps", "127.0.0.1:7400", "process server address")
	timeout := global.Duration("timeout", 0, "give up after this long (0: no limit)")
	tlsDir := global.String("tls-dir", os.Getenv("FERRY_TLS_DIR"), "the operator's TLS identity (cert.pem, key.pem, ca.crt from 'ferry-ps ca issue --role operator'; default $FERRY_TLS_DIR)")
	insecureOK := global.Bool("insecure", false, "talk to the process server in plain text (only to a ferry-ps run with --insecure)")
	global.Usage = func() { cli.Usage(usage) }
	global.Parse(os.Args[1:])
	args := global.Args()
	if len(args) == 0 {
		cli.Usage(usage)
	}
	creds, err := tlsca.DialOption(*tlsDir, *insecureOK, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		cli.Fatal("ferryctl", err)
	}
	conn, err := grpc.NewClient(*ps, creds, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
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
	if admin := map[string]func(context.Context, ferryv1.RecoveryClient, []string) error{
		"policy": policyCmd, "group": groupCmd, "plan": planCmd}[cmd]; admin != nil {
		if err := admin(ctx, ferryv1.NewRecoveryClient(conn), rest); err != nil {
			cli.Fatal("ferryctl "+cmd, err)
		}
		return
	}
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	vm := fs.String("vm", "", "VM name")
	point := fs.String("point", ferry.PointLatestProcessed, "recovery point: latest-processed, latest or an ID")
	disk := fs.String("disk", "", "disk name")
	out := fs.String("out", "", "image file to write (created, mode 0600; an existing file only with --force)")
	force := fs.Bool("force", false, "export: replace an existing --out file")
	typ := fs.String("type", "", "failover type: test, planned or unplanned")
	network := fs.String("network", "", "test failover: the isolated network for the test VM (default test-VM)")
	shutdown := fs.Bool("shutdown", false, "unplanned failover: try to shut the source down and sync first")
	location := fs.String("location", string(ferry.LocationOriginal), "reprotect: original (send only what differs) or alternate (new disks, send everything)")
	overNBD := fs.Bool("nbd", false, "export: serve over NBD instead of writing a file")
	writable := fs.Bool("writable", false, "export --nbd: copy-on-write instead of read-only")
	limit := fs.Int("limit", 100, "audit: the newest this many entries (0: all kept)")
	syncOpt := fs.String("sync", "", "reprotect and failback: before (the default: copy while the VM runs, final delta at downtime) or during (failover only: nothing moves before the failback, then the whole disks after shutdown, without checksums; a VM reprotected so fails back so)")
	if cmd == "failover" || cmd == "change-point" || cmd == "failback" {
		fs.Lookup("point").DefValue = ferry.PointLatest
		*point = ferry.PointLatest
	}
	sub := ""
	if cmd == "agent" && len(rest) > 0 {
		sub, rest = rest[0], rest[1:]
	}
	fs.Parse(rest)
	rc := ferryv1.NewRecoveryClient(conn)
	switch cmd {
	case "vms":
		err = listVMs(ctx, rc)
	case "points":
		err = listPoints(ctx, rc, *vm)
	case "export":
		if *overNBD {
			var resp *ferryv1.ExportNBDResponse
			if resp, err = rc.ExportNBD(ctx, &ferryv1.ExportNBDRequest{Vm: *vm, Point: *point, Disk: *disk, Writable: *writable}); err == nil {
				fmt.Printf("%s\n(export %s, point %d)\n", resp.GetUri(), resp.GetName(), resp.GetPointId())
			}
			break
		}
		err = export(ctx, conn, *vm, *point, *disk, *out, *force)
	case "exports":
		err = listExports(ctx, rc)
	case "audit":
		var resp *ferryv1.ListAuditResponse
		if resp, err = rc.ListAudit(ctx, &ferryv1.ListAuditRequest{Limit: uint32(*limit)}); err == nil {
			w := table("TIME\tWHO\tFROM\tACTION\tTARGET\tOUTCOME")
			for _, e := range resp.GetEntries() {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", time.Unix(0, e.GetTimeUnixNano()).UTC().Format(time.RFC3339), safe(e.GetWho()), safe(e.GetAddr()),
					strings.TrimPrefix(e.GetAction(), "/ferry.v1.Recovery/"), safe(e.GetTarget()), safe(e.GetOutcome()))
			}
			err = w.Flush()
		}
	case "agent":
		if sub != "release" || *vm == "" {
			err = fmt.Errorf("agent wants: release --vm NAME")
			break
		}
		var resp *ferryv1.ReleaseAgentResponse
		if resp, err = rc.ReleaseAgent(ctx, &ferryv1.VMRequest{Vm: *vm}); err == nil {
			fmt.Printf("vm %s released from agent instance %s: the next agent to connect takes it\n", *vm, resp.GetReleased())
		}
	case "unexport":
		if fs.NArg() != 1 {
			err = fmt.Errorf("unexport wants one export name (ferryctl exports lists them)")
			break
		}
		_, err = rc.UnexportNBD(ctx, &ferryv1.UnexportNBDRequest{Name: fs.Arg(0)})
	case "verify":
		pointSet := false
		fs.Visit(func(f *flag.Flag) { pointSet = pointSet || f.Name == "point" })
		if !pointSet {
			err = scrub(ctx, rc, *vm)
			break
		}
		err = verify(ctx, rc, *vm, *point)
	case "status":
		err = status(ctx, rc, *vm)
	case "failover":
		t := map[string]ferryv1.FailoverType{"test": ferryv1.FailoverType_FAILOVER_TYPE_TEST, "planned": ferryv1.FailoverType_FAILOVER_TYPE_PLANNED,
			"unplanned": ferryv1.FailoverType_FAILOVER_TYPE_UNPLANNED}[*typ]
		if t == ferryv1.FailoverType_FAILOVER_TYPE_UNSPECIFIED || *vm == "" {
			err = fmt.Errorf("--vm and --type test|planned|unplanned are required")
			break
		}
		err = printJob(rc.Failover(ctx, &ferryv1.FailoverRequest{Vm: *vm, Type: t, Point: *point, Network: *network, Shutdown: *shutdown}))
	case "change-point":
		err = printJob(rc.ChangePoint(ctx, &ferryv1.ChangePointRequest{Vm: *vm, Point: *point}))
	case "commit":
		err = printJob(rc.Commit(ctx, &ferryv1.VMRequest{Vm: *vm}))
	case "cleanup-test":
		err = printJob(rc.CleanupTest(ctx, &ferryv1.VMRequest{Vm: *vm}))
	case "reprotect":
		err = printJob(rc.Reprotect(ctx, &ferryv1.ReprotectRequest{Vm: *vm, Location: *location, Sync: *syncOpt}))
	case "failback":
		err = printJob(rc.Failback(ctx, &ferryv1.FailbackRequest{Vm: *vm, Sync: *syncOpt, Point: *point}))
	case "events":
		var resp *ferryv1.ListEventsResponse
		if resp, err = rc.ListEvents(ctx, &ferryv1.ListEventsRequest{Vm: *vm}); err == nil {
			for _, e := range resp.GetEvents() {
				fmt.Printf("%s  %-14s %-14s %s\n", time.Unix(0, e.GetTimeUnixNano()).UTC().Format(time.RFC3339), e.GetVm(), e.GetKind(), safe(e.GetDetail()))
			}
		}
	case "jobs":
		err = listJobs(ctx, rc, *vm)
	case "job":
		var id uint64
		if _, err = fmt.Sscan(fs.Arg(0), &id); err != nil {
			err = fmt.Errorf("job wants a job ID")
			break
		}
		err = printJob(rc.GetJob(ctx, &ferryv1.GetJobRequest{Id: id}))
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
	w := table("VM\tDISKS\tEPOCH\tDURABLE SEQ\tCONSISTENT\tPOINTS\tRPO\tRATIO")
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
	w := table("ID\tTIME\tAGE\tCONSISTENCY\tTAG")
	for _, p := range resp.GetPoints() {
		t := time.Unix(0, p.GetTimeUnixNano())
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", p.GetId(), t.UTC().Format(time.RFC3339), time.Since(t).Round(time.Second), consistency(p.GetConsistency()), safe(p.GetTag()))
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

func status(ctx context.Context, rc ferryv1.RecoveryClient, vm string) error {
	resp, err := rc.Status(ctx, &ferryv1.StatusRequest{Vm: vm})
	if err != nil {
		return err
	}
	w := table("VM\tSTATE\tRPO\tPOINTS\tUNPROCESSED\tEPOCH\tINSTANCE\tALLOWED")
	for _, v := range resp.GetVms() {
		state := v.GetState()
		if v.GetRpoAlert() {
			state += " (RPO ALERT)"
		}
		if v.GetTestFailover() {
			state += " (test failover running)"
		}
		rpo := "-"
		if v.GetRpoSeconds() > 0 {
			rpo = (time.Duration(v.GetRpoSeconds()) * time.Second).String()
		}
		inst := v.GetInstance()
		if inst == "" {
			inst = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", v.GetName(), state, rpo, v.GetPoints(), v.GetUnprocessedBytes(), v.GetEpoch(), inst, strings.Join(v.GetAllowed(), ","))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	for _, v := range resp.GetVms() {
		if v.GetReverse() != "" {
			fmt.Printf("%s reverse replication: %s\n", v.GetName(), safe(v.GetReverse()))
		}
		if vm != "" && v.GetAgent() != "" {
			fmt.Printf("%s agent: %s\n", v.GetName(), safe(v.GetAgent()))
		}
		if v.GetAgentConflict() != "" {
			fmt.Printf("%s AGENT CONFLICT: %s\n", v.GetName(), safe(v.GetAgentConflict()))
		}
		if v.GetDiskConflict() != "" {
			fmt.Printf("%s DISK SIZE CHANGED: %s\n", v.GetName(), safe(v.GetDiskConflict()))
		}
	}
	return nil
}

func listJobs(ctx context.Context, rc ferryv1.RecoveryClient, vm string) error {
	resp, err := rc.ListJobs(ctx, &ferryv1.ListJobsRequest{Vm: vm})
	if err != nil {
		return err
	}
	w := table("ID\tTYPE\tVM\tSTARTED\tDURATION\tOUTCOME")
	for _, j := range resp.GetJobs() {
		d := "-"
		if j.GetEndUnixNano() != 0 {
			d = time.Duration(j.GetEndUnixNano() - j.GetStartUnixNano()).Round(time.Millisecond).String()
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\n", j.GetId(), j.GetType(), j.GetVm(), time.Unix(0, j.GetStartUnixNano()).UTC().Format(time.RFC3339), d, j.GetOutcome())
	}
	return w.Flush()
}

// printJob prints a job with its steps and findings; a failed job is an
// error.
func printJob(j *ferryv1.Job, err error) error {
	if err != nil {
		return err
	}
	total := time.Duration(j.GetEndUnixNano() - j.GetStartUnixNano())
	fmt.Printf("job %d: %s of %s %s in %v\n", j.GetId(), j.GetType(), j.GetVm(), j.GetOutcome(), total.Round(time.Millisecond))
	if j.GetRequestedBy() != "" {
		fmt.Printf("requested by %s\n", j.GetRequestedBy())
	}
	if p := j.GetPoint(); p != nil {
		fmt.Printf("recovery point %d (%s, %s, tag %q)\n", p.GetId(), consistency(p.GetConsistency()), time.Unix(0, p.GetTimeUnixNano()).UTC().Format(time.RFC3339), safe(p.GetTag()))
	}
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	for _, s := range j.GetSteps() {
		fmt.Fprintf(w, "  %s\t%s\t%v\t%s\n", s.GetName(), s.GetOutcome(), time.Duration(s.GetEndUnixNano()-s.GetStartUnixNano()).Round(time.Millisecond), safe(s.GetDetail()))
	}
	w.Flush()
	for _, f := range j.GetFindings() {
		mark := "ok  "
		switch {
		case f.GetUnknown():
			mark = "?   "
		case !f.GetOk():
			mark = "FIX "
		}
		fmt.Printf("  %s %s: %s\n", mark, f.GetCheck(), safe(f.GetDetail()))
	}
	if c := j.GetConsole(); c != "" {
		fmt.Printf("console:\n  %s\n", strings.ReplaceAll(safe(strings.TrimSpace(strings.ReplaceAll(c, "\r", ""))), "\\n", "\n  "))
	}
	if ferry.Outcome(j.GetOutcome()) != ferry.OutcomeSucceeded {
		return fmt.Errorf("job %d failed: %s", j.GetId(), safe(j.GetError()))
	}
	return nil
}

// table returns a writer of aligned columns with header as its first line.
func table(header string) *tabwriter.Writer {
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, header)
	return w
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

// safe escapes control characters in text that came from elsewhere (a
// guest's console, an agent's tag, a hook's message), so that it cannot
// move the cursor, retitle the terminal or hide lines on the operator's
// screen: newlines become \n, the rest \xNN or \uNNNN.
func safe(s string) string {
	clean := true
	for _, c := range s {
		if !unicode.IsPrint(c) && c != ' ' {
			clean = false
			break
		}
	}
	if clean && utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i, w := 0, 0; i < len(s); i += w {
		c, n := utf8.DecodeRuneInString(s[i:])
		w = n
		switch {
		case c == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, "\\x%02x", s[i])
		case c == '\n':
			b.WriteString("\\n")
		case c == ' ' || unicode.IsPrint(c):
			b.WriteRune(c)
		case c < 0x100:
			fmt.Fprintf(&b, "\\x%02x", c)
		default:
			fmt.Fprintf(&b, "\\u%04x", c)
		}
	}
	return b.String()
}
