// Command ferry-bench measures Ferry against baselines in the same run.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/bench"
	"github.com/ferrydr/ferry/pkg/cli"
)

var names = []string{"throughput", "fanin", "nbd", "resync", "scan", "rpo", "rto", "failback", "relay", "objstore", "tier"}

func main() {
	root := cli.Root("ferry-bench [flags] BENCHMARK...", "measure Ferry against baselines in the same run", `ferry-bench measures Ferry, each figure beside a baseline from the same run,
and ends each benchmark with one line per goal:
  target: NAME measured=X goal=Y met|missed

Usage:
  ferry-bench [flags] BENCHMARK...

Benchmarks:
  throughput  agent -> process server ingest of incompressible, ~2:1 and
              mostly-zero data, against the in-process limit (same records,
              same codec, no network) and a raw fsync'd write
  fanin       8 agents' initial copies at once against one agent's, and the
              process server's memory meanwhile
  nbd         the agent's NBD front end: qemu-img convert of an image and fio
              4 KiB random writes, against a plain file
  resync      delta resync of an image with 0.1%, 1%, 10% changed blocks
              against rsync (default and 4 KiB blocks) over loopback
  scan        scan mode: bytes read between scans of an unchanged image, and
              the read rate under --scan-rate
  rpo         achieved RPO (p50/p99/max) of VMs under churn with 1 s points
  rto         test failover and unplanned failover + commit against disk size
  failback    original-location reprotect against a full copy
  relay       WAN bytes of reverse replication relayed (verified, compressed)
              by the recovery-site process server against direct
  objstore    4 MiB and 64 KiB objects through the object store to an S3
              server (versitygw) against a local fsync'd write
  tier        ingest through the object store tier (fsync and put to the
              bucket before the ack) against the local journal alone
  all         every one of them

Exit codes: 0 when every benchmark ran (goals met or missed), 1 when one
failed, 2 for bad usage.`)
	root.ValidArgs = append(slices.Clone(names), "all")
	root.Args = func(c *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cli.Usagef("name at least one benchmark (%v or all)", names)
		}
		for _, a := range args {
			if !slices.Contains(c.ValidArgs, a) {
				return cli.Usagef("unknown benchmark %q (want one of %v or all)", a, names)
			}
		}
		return nil
	}
	fs := root.Flags()
	fs.SortFlags = false
	exe, _ := os.Executable()
	bin := fs.String("bin", filepath.Dir(exe), "directory holding ferry-ps (make build puts both in bin/)")
	dir := fs.String("dir", os.TempDir(), "scratch directory")
	size := fs.Int64("size", 0, "MiB of input per throughput run, MiB per image for resync, nbd and failback (0: each benchmark's default)")
	jsonOut := fs.String("json", "", "write every table, figure and target as JSON to this file (- for standard output)")
	charts := fs.String("charts", "", "write SVG charts (rpo.svg: RPO over time; throughput.svg: throughput by data kind) into this directory")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of this process (agents and in-process servers) to this file")
	versitygw := fs.String("versitygw", versitygwPath(), "the S3 server the objstore benchmark runs (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)")
	root.RunE = func(_ *cobra.Command, args []string) error {
		want := map[string]bool{}
		for _, a := range args {
			if a == "all" {
				for _, n := range names {
					want[n] = true
				}
			}
			want[a] = true
		}
		return runBenchmarks(want, *bin, *dir, *size, *jsonOut, *charts, *cpuprofile, *versitygw)
	}
	cli.Execute(root)
}

// versitygwPath is where versitygw is: in PATH, else where go install
// puts it.
func versitygwPath() string {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		return filepath.Join(strings.TrimSpace(string(out)), "bin", "versitygw")
	}
	return "versitygw"
}

// runBenchmarks runs the benchmarks wanted and prints their tables.
func runBenchmarks(want map[string]bool, bin, dir string, size int64, jsonOut, charts, cpuprofile, versitygw string) error {
	if charts != "" {
		if err := os.MkdirAll(charts, 0o755); err != nil {
			return err
		}
	}
	chart := func(name string) string {
		if charts == "" {
			return ""
		}
		return filepath.Join(charts, name)
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	if cpuprofile != "" {
		f, err := os.Create(cpuprofile)
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	bytes := size << 20
	var tables []*bench.Table
	var failed error
	run := func(name string, fn func() (*bench.Table, error)) {
		if !want[name] || failed != nil {
			return
		}
		t, err := fn()
		if err != nil {
			failed = fmt.Errorf("%s: %w", name, err)
			return
		}
		t.Name = name
		t.Print(os.Stdout)
		tables = append(tables, t)
	}
	run("throughput", func() (*bench.Table, error) {
		return bench.Throughput(ctx, bench.ThroughputConfig{Bin: bin, Dir: dir, Bytes: bytes, Chart: chart("throughput.svg")})
	})
	run("fanin", func() (*bench.Table, error) {
		return bench.FanIn(ctx, bench.FanInConfig{Bin: bin, Dir: dir, Bytes: bytes})
	})
	run("nbd", func() (*bench.Table, error) {
		return bench.NBD(ctx, bench.NBDConfig{Bin: bin, Dir: dir, Bytes: bytes})
	})
	run("resync", func() (*bench.Table, error) {
		return bench.Resync(ctx, bench.ResyncConfig{Dir: dir, Bytes: bytes})
	})
	run("scan", func() (*bench.Table, error) { return bench.Scan(ctx, bench.ScanConfig{Bin: bin, Dir: dir}) })
	run("rpo", func() (*bench.Table, error) {
		return bench.RPO(ctx, bench.RPOConfig{Dir: dir, Chart: chart("rpo.svg")})
	})
	run("rto", func() (*bench.Table, error) { return bench.RTO(ctx, bench.RTOConfig{Dir: dir}) })
	run("failback", func() (*bench.Table, error) {
		return bench.Failback(ctx, bench.FailbackConfig{Dir: dir, Bytes: bytes})
	})
	run("relay", func() (*bench.Table, error) { return bench.Relay(ctx, bench.RelayConfig{Dir: dir}) })
	run("objstore", func() (*bench.Table, error) {
		return bench.ObjStore(ctx, bench.ObjStoreConfig{Versitygw: versitygw, Dir: dir, Bytes: bytes})
	})
	run("tier", func() (*bench.Table, error) {
		return bench.Tier(ctx, bench.TierConfig{Bin: bin, Versitygw: versitygw, Dir: dir})
	})
	if failed != nil {
		return failed
	}
	if jsonOut != "" {
		w := os.Stdout
		if jsonOut != "-" {
			f, err := os.Create(jsonOut)
			if err != nil {
				return err
			}
			defer f.Close()
			w = f
		}
		if err := bench.WriteJSON(w, tables); err != nil {
			return err
		}
	}
	return nil
}
