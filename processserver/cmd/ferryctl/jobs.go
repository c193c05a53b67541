package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/cli"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// jobsCmd lists jobs.
func jobsCmd() *cobra.Command {
	c := command("jobs [--vm NAME]", "list jobs")
	vm := vmFlag(c.Flags())
	c.RunE = run(func(ctx context.Context, ps server, _ []string) error {
		resp, err := ps.rc.ListJobs(ctx, &ferryv1.ListJobsRequest{Vm: *vm})
		if err != nil {
			return err
		}
		return emit(resp, func() error {
			w := table("ID\tTYPE\tVM\tSTARTED\tDURATION\tOUTCOME")
			for _, j := range resp.GetJobs() {
				d := "-"
				if j.GetEndUnixNano() != 0 {
					d = time.Duration(j.GetEndUnixNano() - j.GetStartUnixNano()).Round(time.Millisecond).String()
				}
				fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\n", j.GetId(), j.GetType(), j.GetVm(), time.Unix(0, j.GetStartUnixNano()).UTC().Format(time.RFC3339), d, j.GetOutcome())
			}
			return w.Flush()
		})
	})
	return c
}

func jobCmd() *cobra.Command {
	c := &cobra.Command{Use: "job ID", Short: "one job with its steps, findings and boot console", Args: cli.ExactArgs(1)}
	c.RunE = run(func(ctx context.Context, ps server, args []string) error {
		var id uint64
		if _, err := fmt.Sscan(args[0], &id); err != nil {
			return cli.Usagef("job wants a job ID, not %q", args[0])
		}
		j, err := ps.rc.GetJob(ctx, &ferryv1.GetJobRequest{Id: id})
		if err != nil {
			return err
		}
		if globals.output != "table" {
			if err := emit(j, nil); err != nil {
				return err
			}
			return jobFailed(j)
		}
		return printJob(j, nil)
	})
	return c
}

func eventsCmd() *cobra.Command {
	c := command("events [--vm NAME] [--follow]", "RPO alerts raised and cleared, health changes, failed multi-VM points, interrupted operations")
	vm := vmFlag(c.Flags())
	follow := c.Flags().BoolP("follow", "f", false, "keep printing events as they happen, through restarts of the server (with -o json: one JSON object per line)")
	every := c.Flags().Duration("interval", time.Second, "--follow: how often to ask the server")
	c.RunE = run(func(ctx context.Context, ps server, _ []string) error {
		if *follow && *every < 100*time.Millisecond {
			return cli.Usagef("--interval %v: 100ms at least", *every)
		}
		seen := map[string]bool{}
		for first := true; ; first = false {
			resp, err := ps.rc.ListEvents(ctx, &ferryv1.ListEventsRequest{Vm: *vm})
			switch {
			case err != nil && !first && ctx.Err() != nil:
				return nil // interrupted while following
			case err != nil && !first:
				// Following goes on through a restart of the server.
				fmt.Fprintf(os.Stderr, "ferryctl events: %v; trying again\n", err)
				resp = &ferryv1.ListEventsResponse{}
			case err != nil:
				return err
			}
			if !*follow {
				return emit(resp, func() error { printEvents(resp.GetEvents(), nil); return nil })
			}
			var fresh []*ferryv1.Event
			for _, e := range resp.GetEvents() {
				k := fmt.Sprintf("%d\x00%s\x00%s\x00%s", e.GetTimeUnixNano(), e.GetVm(), e.GetKind(), e.GetDetail())
				if !seen[k] {
					seen[k] = true
					fresh = append(fresh, e)
				}
			}
			if err := printEvents(fresh, &globals.output); err != nil {
				return err
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(*every):
			}
		}
	})
	return c
}

// printEvents prints events as lines; with an output format (following),
// each as one JSON object per line, or one YAML document each.
func printEvents(events []*ferryv1.Event, format *string) error {
	for _, e := range events {
		if format != nil && *format != "table" {
			if *format == "yaml" {
				fmt.Println("---")
			}
			if err := emit(e, nil); err != nil {
				return err
			}
			continue
		}
		fmt.Printf("%s  %-14s %-16s %s\n", time.Unix(0, e.GetTimeUnixNano()).UTC().Format(time.RFC3339), e.GetVm(), e.GetKind(), safe(e.GetDetail()))
	}
	return nil
}

func auditCmd() *cobra.Command {
	c := command("audit [--limit N]", "who changed what, from where: calls, exports, enrollments, stream takeovers, failed handshakes")
	limit := c.Flags().Int("limit", 100, "the newest this many entries (0: all kept)")
	c.RunE = run(func(ctx context.Context, ps server, _ []string) error {
		resp, err := ps.rc.ListAudit(ctx, &ferryv1.ListAuditRequest{Limit: uint32(*limit)})
		if err != nil {
			return err
		}
		return emit(resp, func() error {
			w := table("TIME\tWHO\tFROM\tACTION\tTARGET\tOUTCOME")
			for _, e := range resp.GetEntries() {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", time.Unix(0, e.GetTimeUnixNano()).UTC().Format(time.RFC3339), safe(e.GetWho()), safe(e.GetAddr()),
					strings.TrimPrefix(e.GetAction(), "/ferry.v1.Recovery/"), safe(e.GetTarget()), safe(e.GetOutcome()))
			}
			return w.Flush()
		})
	})
	return c
}

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
	return jobFailed(j)
}

// jobFailed is an error when j did not succeed.
func jobFailed(j *ferryv1.Job) error {
	if ferry.Outcome(j.GetOutcome()) != ferry.OutcomeSucceeded {
		return fmt.Errorf("job %d failed: %s", j.GetId(), safe(j.GetError()))
	}
	return nil
}
