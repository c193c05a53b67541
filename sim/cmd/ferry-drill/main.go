// Command ferry-drill runs a failover drill against Ferry's simulator: the
// real agent and process server over gRPC on loopback, simulated machines,
// disks, clock and recovery site. It prints a report and exits non-zero if
// any failed-over disk differs from the ground truth.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/sim"
)

func main() {
	fs := flag.NewFlagSet("ferry-drill", flag.ExitOnError)
	seed := fs.Uint64("seed", 1, "seed of the workloads; a drill replays from its seed")
	minutes := fs.Int("minutes", 10, "virtual minutes of replication before the test failover")
	dir := fs.String("dir", "", "directory for the process server's and agents' files (default: a new temporary one, removed after)")
	level := fs.String("log-level", "error", "debug, info, warn or error (logs go to stderr)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: ferry-drill [flags]

Runs the failover drill: three VMs with different workloads replicate to a
process server; each gets a test failover on an isolated network, verified
and cleaned up while replication goes on; the primary site is lost; each VM
fails over unplanned to its latest processed point, changes to the latest
point, and commits. The report gives per VM the point used, the data lost
against the ground truth (RPO), the job's steps and their durations (RTO),
the readiness findings and whether every disk matched.

Flags:
`)
		fs.PrintDefaults()
	}
	fs.Parse(os.Args[1:])
	log, err := cli.Logger(*level)
	if err != nil {
		cli.Fatal("ferry-drill", err)
	}
	if *dir == "" {
		d, err := sim.TempDir()
		if err != nil {
			cli.Fatal("ferry-drill", err)
		}
		defer os.RemoveAll(d)
		*dir = d
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	rep, err := sim.FailoverDrill(ctx, sim.Config{Seed: *seed, Dir: *dir, Logger: log}, *minutes)
	if rep != nil {
		rep.Print(os.Stdout)
	}
	if err != nil {
		cli.Fatal("ferry-drill", err)
	}
	if len(rep.Failures) > 0 {
		os.Exit(1)
	}
}
