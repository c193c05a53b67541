package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ferrydr/ferry"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// jobsCmd lists jobs.
func jobsCmd(ctx context.Context, ps server, args []string) error {
	fs := flags("jobs")
	vm := vmFlag(fs)
	fs.Parse(args)
	return listJobs(ctx, ps.rc, *vm)
}

// jobCmd shows one job with its steps.
func jobCmd(ctx context.Context, ps server, args []string) error {
	fs := flags("job")
	fs.Parse(args)
	var id uint64
	if _, err := fmt.Sscan(fs.Arg(0), &id); err != nil {
		return fmt.Errorf("job wants a job ID")
	}
	return printJob(ps.rc.GetJob(ctx, &ferryv1.GetJobRequest{Id: id}))
}

// eventsCmd lists RPO alerts raised and cleared and other events.
func eventsCmd(ctx context.Context, ps server, args []string) error {
	fs := flags("events")
	vm := vmFlag(fs)
	fs.Parse(args)
	resp, err := ps.rc.ListEvents(ctx, &ferryv1.ListEventsRequest{Vm: *vm})
	if err != nil {
		return err
	}
	for _, e := range resp.GetEvents() {
		fmt.Printf("%s  %-14s %-14s %s\n", time.Unix(0, e.GetTimeUnixNano()).UTC().Format(time.RFC3339), e.GetVm(), e.GetKind(), safe(e.GetDetail()))
	}
	return nil
}

// auditCmd lists who changed what, from where.
func auditCmd(ctx context.Context, ps server, args []string) error {
	fs := flags("audit")
	limit := fs.Int("limit", 100, "the newest this many entries (0: all kept)")
	fs.Parse(args)
	resp, err := ps.rc.ListAudit(ctx, &ferryv1.ListAuditRequest{Limit: uint32(*limit)})
	if err != nil {
		return err
	}
	w := table("TIME\tWHO\tFROM\tACTION\tTARGET\tOUTCOME")
	for _, e := range resp.GetEntries() {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", time.Unix(0, e.GetTimeUnixNano()).UTC().Format(time.RFC3339), safe(e.GetWho()), safe(e.GetAddr()),
			strings.TrimPrefix(e.GetAction(), "/ferry.v1.Recovery/"), safe(e.GetTarget()), safe(e.GetOutcome()))
	}
	return w.Flush()
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
