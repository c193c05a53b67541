package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// vmsCmd lists the protected VMs.
func vmsCmd(ctx context.Context, ps server, args []string) error {
	flags("vms").Parse(args)
	return listVMs(ctx, ps.rc)
}

// pointsCmd lists a VM's recovery points.
func pointsCmd(ctx context.Context, ps server, args []string) error {
	fs := flags("points")
	vm := vmFlag(fs)
	fs.Parse(args)
	return listPoints(ctx, ps.rc, *vm)
}

// statusCmd shows protection states, allowed actions and RPO.
func statusCmd(ctx context.Context, ps server, args []string) error {
	fs := flags("status")
	vm := vmFlag(fs)
	fs.Parse(args)
	return status(ctx, ps.rc, *vm)
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
