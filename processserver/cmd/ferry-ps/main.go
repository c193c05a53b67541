// Command ferry-ps runs Ferry's process server: it receives replication
// streams from agents, keeps recovery points and serves the recovery API.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/processserver"
)

const usage = `
ferry-ps runs Ferry's process server at the recovery site.

Usage:
  ferry-ps serve [flags]     receive replication and serve the recovery API

Run 'ferry-ps serve --help' for the flags.
`

func main() {
	if len(os.Args) < 2 || os.Args[1] != "serve" {
		cli.Usage(usage)
	}
	cfg := processserver.DefaultConfig()
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	fs.StringVar(&cfg.DataDir, "data", cfg.DataDir, "directory of the journal (created if missing)")
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "gRPC address for agents and ferryctl")
	fs.StringVar(&cfg.MetricsListen, "metrics", cfg.MetricsListen, "admin address for /metrics and pprof (empty: off)")
	fs.StringVar(&cfg.Codec, "codec", cfg.Codec, "compression of journaled data: zstd, s2 (about 2x faster, ~7% larger) or none")
	fs.StringVar(&cfg.ComputeHook, "compute-hook", "", "command that creates, starts, stops and deletes VMs at failover (see the README)")
	fs.DurationVar(&cfg.Retention, "retention", 24*time.Hour, "retention of the default replication policy when it is first created (VMware-style VMs follow vmware-72h); change policies with ferryctl policy")
	fs.DurationVar(&cfg.RPOThreshold, "rpo-threshold", 15*time.Minute, "RPO alert threshold of the default policies when first created (metric ferry_ps_rpo_alert and an event)")
	fs.DurationVar(&cfg.PlanActionTimeout, "plan-action-timeout", 10*time.Minute, "longest a recovery plan's command action may run")
	fs.StringVar(&cfg.NBDListen, "nbd-listen", "", "serve recovery points and test-failover disks over NBD on host:port or unix:PATH")
	fs.StringVar(&cfg.MasterTarget, "master-target", "", "the primary site's master target (host:port), for reprotect and failback")
	fs.DurationVar(&cfg.ProcessInterval, "process-interval", 5*time.Second, "how often received markers are processed into recovery points")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: ferry-ps serve [flags]\n\nReceives replication streams into a journal under --data and serves the\nrecovery API on --listen. SIGTERM or SIGINT stops it cleanly: open streams\ncommit what they had verified first.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.Parse(os.Args[2:])
	log, err := cli.Logger(*level)
	if err != nil {
		cli.Fatal("ferry-ps", err)
	}
	cfg.Logger = log
	srv, err := processserver.New(cfg)
	if err != nil {
		cli.Fatal("ferry-ps", err)
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	if err := srv.Open(ctx); err != nil {
		cli.Fatal("ferry-ps", err)
	}
	<-ctx.Done()
	log.Info("stopping")
	cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Close(cctx); err != nil {
		cli.Fatal("ferry-ps", err)
	}
}
