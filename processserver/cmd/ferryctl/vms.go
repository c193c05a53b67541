package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

func vmsCmd() *cobra.Command {
	c := command("vms", "list protected VMs")
	c.RunE = run(func(ctx context.Context, ps server, _ []string) error {
		resp, err := ps.rc.ListVMs(ctx, &ferryv1.ListVMsRequest{})
		if err != nil {
			return err
		}
		return emit(resp, func() error { return vmsTable(resp) })
	})
	return c
}

func vmsTable(resp *ferryv1.ListVMsResponse) error {
	w := table("VM\tDISKS\tEPOCH\tDURABLE-SEQ\tCONSISTENT\tPOINTS\tRPO\tRATIO")
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

func pointsCmd() *cobra.Command {
	c := command("points --vm NAME", "list a VM's recovery points")
	vm := vmFlag(c.Flags())
	c.RunE = run(func(ctx context.Context, ps server, _ []string) error {
		if err := need("vm", vm); err != nil {
			return err
		}
		resp, err := ps.rc.ListPoints(ctx, &ferryv1.ListPointsRequest{Vm: *vm})
		if err != nil {
			return err
		}
		return emit(resp, func() error {
			w := table("ID\tTIME\tAGE\tCONSISTENCY\tTAG")
			for _, p := range resp.GetPoints() {
				t := time.Unix(0, p.GetTimeUnixNano())
				fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", p.GetId(), t.UTC().Format(time.RFC3339), time.Since(t).Round(time.Second), consistency(p.GetConsistency()), safe(p.GetTag()))
			}
			return w.Flush()
		})
	})
	return c
}

func statusCmd() *cobra.Command {
	c := command("status [--vm NAME]", "protection state, replication health, RPO, agent and progress, allowed actions")
	c.Long = `Shows each VM's protection state (the state machine: enabling, protected,
failed-over, ...) and its replication health beside it, as Azure Site
Recovery's replicated items do: healthy, warning or critical, with the
reason (agent disconnected or silent for 3 heartbeats, RPO above the
threshold, a resync under way, a disk that changed size). A VM can be
protected and critical: its points are there, new ones are not coming.

Columns: RPO against the policy's threshold; AGENT connected or not, and
the age of its last message; PROGRESS of an initial replication or resync
with its rate and time left; LAST-TEST the last successful test failover's
age; ALLOWED the actions the state allows.`
	vm := vmFlag(c.Flags())
	c.RunE = run(func(ctx context.Context, ps server, _ []string) error {
		resp, err := ps.rc.Status(ctx, &ferryv1.StatusRequest{Vm: *vm})
		if err != nil {
			return err
		}
		return emit(resp, func() error { return statusTable(resp, *vm != "") })
	})
	return c
}

func statusTable(resp *ferryv1.StatusResponse, one bool) error {
	w := table("VM\tSTATE\tHEALTH\tRPO/THRESHOLD\tPOINTS\tAGENT\tPROGRESS\tLAST-TEST\tALLOWED")
	now := time.Now()
	for _, v := range resp.GetVms() {
		rpo := "-"
		if v.GetRpoSeconds() > 0 {
			rpo = secsf(v.GetRpoSeconds()).String()
		}
		if t := v.GetRpoThresholdSeconds(); t > 0 {
			rpo += "/" + secsf(t).String()
		}
		agent := "disconnected"
		if v.GetAgentConnected() {
			agent = "connected"
			if v.HeartbeatAgeSeconds != nil {
				agent += fmt.Sprintf("(%s)", secsf(v.GetHeartbeatAgeSeconds()))
			}
		}
		prog := "-"
		if v.Progress != nil {
			prog = fmt.Sprintf("%.1f%%", v.GetProgress()*100)
			if v.GetProgressRate() > 0 {
				prog += fmt.Sprintf(",%s/s", strings.ReplaceAll(bytesf(v.GetProgressRate()), " ", ""))
			}
			if v.ProgressEtaSeconds != nil {
				prog += "," + secsf(v.GetProgressEtaSeconds()).String() + "-left"
			}
		}
		last := "never"
		if ns := v.GetLastTestFailoverUnixNano(); ns != 0 {
			last = now.Sub(time.Unix(0, ns)).Round(time.Second).String() + "-ago"
		}
		health := v.GetHealth()
		if health == "" {
			health = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", v.GetName(), v.GetState(), health, rpo, v.GetPoints(), agent,
			strings.ReplaceAll(prog, " ", ""), last, strings.Join(v.GetAllowed(), ","))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	for _, v := range resp.GetVms() {
		name := v.GetName()
		if h := v.GetHealth(); h != "" && h != "healthy" || one {
			fmt.Printf("%s health %s: %s\n", name, v.GetHealth(), safe(v.GetHealthReason()))
		}
		if v.GetTestFailover() {
			fmt.Printf("%s: test failover running (instance %s)\n", name, safe(v.GetInstance()))
		} else if v.GetInstance() != "" {
			fmt.Printf("%s: failed over to instance %s, point %d\n", name, safe(v.GetInstance()), v.GetPointId())
		}
		if v.GetRpoAlert() {
			fmt.Printf("%s: RPO ALERT\n", name)
		}
		if v.GetReverse() != "" {
			fmt.Printf("%s reverse replication: %s\n", name, safe(v.GetReverse()))
		}
		if one && v.GetAgent() != "" {
			fmt.Printf("%s agent: %s", name, safe(v.GetAgent()))
			if v.GetAgentHost() != "" || v.GetAgentVersion() != "" {
				fmt.Printf(", host %s, version %s", safe(v.GetAgentHost()), safe(v.GetAgentVersion()))
			}
			fmt.Println()
		}
		if one && v.GetLastTestFailoverJob() != 0 {
			fmt.Printf("%s last test failover: job %d, %s\n", name, v.GetLastTestFailoverJob(), time.Unix(0, v.GetLastTestFailoverUnixNano()).UTC().Format(time.RFC3339))
		}
		if v.GetAgentConflict() != "" {
			fmt.Printf("%s AGENT CONFLICT: %s\n", name, safe(v.GetAgentConflict()))
		}
		if v.GetDiskConflict() != "" {
			fmt.Printf("%s DISK SIZE CHANGED: %s\n", name, safe(v.GetDiskConflict()))
		}
	}
	return nil
}

// secsf is a duration of s seconds, rounded for people.
func secsf(s float64) time.Duration {
	d := time.Duration(s * float64(time.Second))
	if d < 10*time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}

// bytesf formats a byte count or rate for people.
func bytesf(n float64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", n/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", n/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", n/(1<<10))
	}
	return fmt.Sprintf("%.0f B", n)
}
