// Command ferry-drill runs a failover drill against Ferry's simulator: the
// real agent and process server over gRPC on loopback, simulated machines,
// disks, clock and recovery site. It prints a report and exits non-zero if
// any failed-over disk differs from the ground truth.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/sim"
	"github.com/ferrydr/ferry/sim/clusterdrill"
	"github.com/ferrydr/ferry/sim/lab"
)

func main() {
	root := cli.Root("ferry-drill [flags]", "run a failover drill against Ferry's simulator or real guests", `Runs a drill: three VMs with different workloads replicate to a process
server on the real agent, process server and master target over loopback.

full-cycle: the primary site is lost with writes never replicated; each VM
fails over and commits; the recovered VMs run, are reprotected to the master
target (original location: only what differs is sent; one VM to an alternate
location), fail back (synchronizing before failover, one during failover
only), commit, and are reprotected forward; a test failover closes the cycle.

failover: each VM gets a test failover on an isolated network, verified and
cleaned up while replication goes on; the primary site is lost; each VM fails
over unplanned to its latest processed point, changes to the latest point,
and commits.

plan-cycle: the whole cycle through one recovery plan: web-1 and db-1 are a
replication group and the plan's first group, app-1 the second after a manual
step; unplanned failover of the plan to the latest multi-VM processed point,
commit, reprotect of the plan to the master target, failback of the plan (the
group synchronizing before failover, to its common point cut after both
members shut down; app-1 during failover only), commit, reprotect forward and
a test failover of the plan.

plan: web-1 and db-1 form a replication group (multi-VM points); a recovery
plan fails db-1 over first, then web-1 and app-1 after a manual step, with
actions around the groups: test failover of the plan to the latest multi-VM
processed point, cleanup, loss of the primary site, unplanned failover,
change to the latest point, commit.

--compute libvirt runs the drill on real machines instead: a tiny Linux
guest (the Debian kernel, busybox, ext4 root) boots under libvirt from the
agent's NBD front end and writes fsynced records; a test failover boots a
second guest from copy-on-write overlays on an isolated network and is
cleaned up; bad requests are refused; an app-consistent point is cut through
fsfreeze in the guest; the primary site is lost while the guest writes and
the guest fails over unplanned to latest, boots, changes point and commits;
a second guest fails over planned. Then reprotect and failback: to the
original location (the primary boots with the recovery site's writes) and
reprotect again, and to an alternate location (a new domain), reprotected
to synchronize during failover only: nothing moves before its failback. Each recovered
file system is checked by e2fsck and its records against what the guest
reported fsynced. It needs libvirtd with QEMU, linux-image-amd64,
busybox-static and e2fsprogs, and runs as root.

The report gives per VM and action the point used, the data lost against the
ground truth (RPO), the job's steps and durations (RTO), readiness findings,
bytes moved, and whether every disk matched its ground truth.


Exit codes: 0 every verification passed, 1 a verification or the drill
failed, 2 wrong command line.`)
	root.Args = cli.NoArgs
	fs := root.Flags()
	fs.SortFlags = false
	seed := fs.Uint64("seed", 1, "seed of the workloads; a drill replays from its seed")
	minutes := fs.Int("minutes", 10, "virtual minutes of replication before the first failover")
	scenario := fs.String("scenario", "full-cycle", "full-cycle (failover, reprotect, failback, reprotect), failover (test failover, unplanned failover, change point, commit) plan (the same through a recovery plan with a replication group), plan-cycle (the whole cycle through a recovery plan) or cluster (S3 server, etcd and three ferry-ps processes sharing six VMs: a process server killed, the S3 server and the etcd leader taken away, in wall-clock time; needs versitygw and etcd)")
	wall := fs.Bool("wall", false, "print each step's wall-clock time too (the report then differs run to run; without it the same seed prints the same report)")
	compute := fs.String("compute", "sim", "sim (the simulator's machines) or libvirt (real guests booted under libvirt: see below)")
	libvirtURI := fs.String("libvirt-uri", "qemu:///system", "--compute libvirt: the libvirt to run guests on")
	dir := fs.String("dir", "", "directory for the process server's and agents' files (default: a new temporary one, removed after)")
	level := fs.String("log-level", "off", "debug, info, warn, error or off (logs go to stderr)")
	root.RunE = func(*cobra.Command, []string) error {
		return drill(*seed, *minutes, *scenario, *wall, *compute, *libvirtURI, *dir, *level)
	}
	cli.Execute(root)
}

// drill runs one drill and prints its report.
func drill(seed uint64, minutes int, scenario string, wall bool, compute, libvirtURI, dir, level string) error {
	log, err := cli.Logger(level, "text")
	if err != nil {
		return err
	}
	if dir == "" {
		d, err := sim.TempDir()
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	switch compute {
	case "sim":
	case "libvirt":
		rep, err := lab.Drill(ctx, lab.Config{Dir: dir, URI: libvirtURI, Seed: seed, Logger: log, Out: os.Stdout})
		if rep != nil {
			rep.Print(os.Stdout)
		}
		if err != nil {
			return err
		}
		if n := len(rep.Failed()); n > 0 {
			return fmt.Errorf("%d verification(s) failed", n)
		}
		return nil
	default:
		return cli.Usagef("--compute %q: want sim or libvirt", compute)
	}
	if scenario == "cluster" {
		rep, err := clusterdrill.Drill(ctx, clusterdrill.Config{Seed: seed, Dir: dir, Out: os.Stderr, Logger: log})
		if rep != nil {
			rep.Print(os.Stdout)
		}
		if err != nil {
			return err
		}
		if n := len(rep.Failures); n > 0 {
			return fmt.Errorf("%d verification(s) failed", n)
		}
		return nil
	}
	run := sim.FullCycleDrill
	switch scenario {
	case "full-cycle":
	case "failover":
		run = sim.FailoverDrill
	case "plan":
		run = sim.PlanDrill
	case "plan-cycle":
		run = sim.PlanCycleDrill
	default:
		return cli.Usagef("scenario %q: want full-cycle, failover, plan, plan-cycle or cluster", scenario)
	}
	rep, err := run(ctx, sim.Config{Seed: seed, Dir: dir, Logger: log}, minutes)
	if rep != nil {
		rep.Wall, rep.Dir = wall, dir
		rep.Print(os.Stdout)
	}
	if err != nil {
		return err
	}
	if n := len(rep.Failures); n > 0 {
		return fmt.Errorf("%d verification(s) failed", n)
	}
	return nil
}
