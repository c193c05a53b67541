// Command ferry-bench measures Ferry against baselines in the same run.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"

	"github.com/ferrydr/ferry/bench"
	"github.com/ferrydr/ferry/pkg/cli"
)

const usage = `
ferry-bench measures Ferry, each figure beside a baseline from the same run.

Usage:
  ferry-bench [flags] throughput|resync|rpo|rto|failback|relay|all

  throughput  agent -> process server delta throughput for incompressible, ~2:1
              and mostly-zero data, against the in-process limit and a raw
              fsync'd write
  resync      delta resync of an image with 0.1%%, 1%%, 10%% changed blocks
              against rsync --inplace --no-whole-file over loopback
  rpo         achieved RPO (p50/p99/max) of VMs under churn with 1 s points
  rto         test failover and committed failover time against disk size
  failback    original-location reprotect against a full copy
  relay       WAN bytes of reverse replication relayed (verified, compressed)
              by the recovery-site process server against direct

Flags:
`

func main() {
	fs := flag.NewFlagSet("ferry-bench", flag.ExitOnError)
	exe, _ := os.Executable()
	bin := fs.String("bin", filepath.Dir(exe), "directory holding ferry-ps (make build puts both in bin/)")
	dir := fs.String("dir", os.TempDir(), "scratch directory")
	size := fs.Int64("size", 512, "MiB of input per throughput run; MiB per image for resync and failback")
	asJSON := fs.Bool("json", false, "print JSON instead of tables")
	chart := fs.String("chart", "", "rpo: write an SVG chart of RPO over time to this file")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of this process (agent and in-process servers) to this file")
	fs.Usage = func() { fmt.Fprintf(fs.Output(), usage); fs.PrintDefaults() }
	fs.Parse(os.Args[1:])
	if fs.NArg() != 1 {
		fs.Usage()
		os.Exit(2)
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			cli.Fatal("ferry-bench", err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	var tables []*bench.Table
	run := func(name string, fn func() (*bench.Table, error)) {
		if fs.Arg(0) != name && fs.Arg(0) != "all" {
			return
		}
		t, err := fn()
		if err != nil {
			cli.Fatal("ferry-bench "+name, err)
		}
		if !*asJSON {
			t.Print(os.Stdout)
		}
		tables = append(tables, t)
	}
	run("throughput", func() (*bench.Table, error) {
		return bench.Throughput(ctx, bench.ThroughputConfig{Bin: *bin, Dir: *dir, Bytes: *size << 20})
	})
	run("resync", func() (*bench.Table, error) {
		return bench.Resync(ctx, bench.ResyncConfig{Dir: *dir, Bytes: *size << 20})
	})
	run("rpo", func() (*bench.Table, error) {
		return bench.RPO(ctx, bench.RPOConfig{Dir: *dir, Chart: *chart})
	})
	run("rto", func() (*bench.Table, error) { return bench.RTO(ctx, bench.RTOConfig{Dir: *dir}) })
	run("failback", func() (*bench.Table, error) {
		return bench.Failback(ctx, bench.FailbackConfig{Dir: *dir, Bytes: *size << 20})
	})
	run("relay", func() (*bench.Table, error) { return bench.Relay(ctx, bench.RelayConfig{Dir: *dir}) })
	if len(tables) == 0 {
		fs.Usage()
		os.Exit(2)
	}
	if *asJSON {
		bench.WriteJSON(os.Stdout, tables)
	}
}
