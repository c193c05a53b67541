// Command ferry-ps runs Ferry's process server: it receives replication
// streams from agents, keeps recovery points and serves the recovery API.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/pkg/ingest"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/tlsca"
	"github.com/ferrydr/ferry/processserver"
)

const usage = `
ferry-ps runs Ferry's process server at the recovery site.

Usage:
  ferry-ps serve --ca DIR [flags]   receive replication and serve the recovery API over
                                    TLS 1.3 with client certificates (--insecure: plain text)
  ferry-ps ca init --ca DIR [--host H,...]
                                    create the deployment's CA and the server's certificate
                                    (for localhost, 127.0.0.1 and the hosts given)
  ferry-ps ca issue --ca DIR --role operator|admin|mt|ps --name NAME --out DIR [--host H,...] [--ttl D]
                                    issue a key and certificate (ferryctl --tls-dir, ferry-mt --tls-dir);
                                    admin certificates may also upload plans with command actions
  ferry-ps ca revoke --ca DIR --cert FILE [--reason TEXT]
                                    revoke a certificate: refused at the next handshake
                                    (ferry-mt reads the list with --revocations DIR/revoked.json)
  ferry-ps enroll --ca DIR --vm NAME [--ttl 1h]
                                    print a single-use enrollment token for an agent
                                    (ferry-agent run --token-file FILE ...)

Run 'ferry-ps serve --help' for the flags.
`

func main() {
	if len(os.Args) < 2 {
		cli.Usage(usage)
	}
	switch os.Args[1] {
	case "serve":
	case "ca":
		caCmd(os.Args[2:])
		return
	case "enroll":
		enrollCmd(os.Args[2:])
		return
	default:
		cli.Usage(usage)
	}
	cfg := processserver.DefaultConfig()
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	fs.StringVar(&cfg.DataDir, "data", cfg.DataDir, "directory of the journal (created if missing)")
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "gRPC address for agents and ferryctl")
	fs.StringVar(&cfg.MetricsListen, "metrics", cfg.MetricsListen, "admin address for /metrics and pprof (empty: off)")
	fs.StringVar(&cfg.Codec, "codec", cfg.Codec, "compression of journaled data: zstd, s2 (about 2x faster, ~7% larger) or none")
	compute := fs.String("compute", "hook", "how failover creates VMs: libvirt (built in; see --libvirt-*) or hook (--compute-hook, for other hypervisors)")
	fs.StringVar(&cfg.ComputeHook, "compute-hook", "", "command that creates, starts, stops and deletes VMs at failover (see the README)")
	fs.DurationVar(&cfg.ComputeHookTimeout, "compute-hook-timeout", 10*time.Minute, "longest one call of the compute hook may run; then it is killed with its process group")
	lv := processserver.LibvirtConfig{}
	fs.StringVar(&lv.URI, "libvirt-uri", "qemu:///system", "--compute libvirt: the recovery site's libvirt")
	fs.StringVar(&lv.Network, "libvirt-network", "", "--compute libvirt: the recovery network of planned and unplanned failovers when ferryctl names none")
	fs.StringVar(&lv.Dir, "libvirt-dir", "", "--compute libvirt: directory of recovered domains' NBD sockets and console logs, reachable by QEMU's user (default DATA/libvirt)")
	fs.StringVar(&lv.DomainType, "libvirt-domain-type", "", "--compute libvirt: kvm or qemu (default: kvm when /dev/kvm runs guests here, else qemu)")
	fs.StringVar(&lv.Prefix, "libvirt-prefix", "", "--compute libvirt: prefix of the names of domains Ferry creates")
	fs.DurationVar(&lv.ShutdownTimeout, "libvirt-shutdown-timeout", time.Minute, "--compute libvirt: how long a graceful shutdown may take before the domain is destroyed")
	fs.DurationVar(&cfg.ProbeTimeout, "probe-timeout", 3*time.Minute, "how long the readiness probe waits for a failed-over VM to boot, lease an address and answer on SSH or RDP")
	fs.DurationVar(&cfg.Retention, "retention", 24*time.Hour, "retention of the default replication policy when it is first created (VMware-style VMs follow vmware-72h); change policies with ferryctl policy")
	fs.DurationVar(&cfg.RPOThreshold, "rpo-threshold", 15*time.Minute, "RPO alert threshold of the default policies when first created (metric ferry_ps_rpo_alert and an event)")
	fs.DurationVar(&cfg.PlanActionTimeout, "plan-action-timeout", 10*time.Minute, "longest a recovery plan's command action may run; then it is killed with its process group")
	fs.StringVar(&cfg.PlanActionUser, "plan-action-user", "nobody", "user recovery plans' command actions run as (uploading such plans needs an admin certificate)")
	fs.Func("plan-action-env", "NAME=VALUE added to the command actions' clean environment (repeatable)", func(v string) error {
		if !strings.Contains(v, "=") {
			return fmt.Errorf("want NAME=VALUE")
		}
		cfg.PlanActionEnv = append(cfg.PlanActionEnv, v)
		return nil
	})
	fs.StringVar(&cfg.NBDListen, "nbd-listen", "", "serve recovery points and test-failover disks over NBD on host:port (TLS with STARTTLS and an operator or admin certificate; plain only with --nbd-insecure) or unix:PATH (mode 0600, only this user and root)")
	fs.BoolVar(&cfg.NBDInsecure, "nbd-insecure", false, "serve --nbd-listen host:port in plain text without authentication: anyone who reaches it and knows an export's name can read or write it")
	fs.Int64Var(&cfg.MaxDiskBytes, "max-disk-size", ingest.DefaultMaxDiskBytes, "largest disk (bytes) an agent may declare; larger ones are refused")
	fs.Int64Var(&cfg.ScratchQuota, "scratch-quota", 16<<30, "bytes all writable exports and test-failover disks may write together before their writes fail with ENOSPC")
	fs.StringVar(&cfg.MasterTarget, "master-target", "", "the primary site's master target (host:port), for reprotect and failback")
	fs.DurationVar(&cfg.ProcessInterval, "process-interval", 5*time.Second, "how often received markers are processed into recovery points")
	caDir := fs.String("ca", "", "the CA directory of ferry-ps ca init: TLS 1.3 with client certificates on every port, and agent enrollment")
	keyFile := fs.String("key-file", "", "encrypt journal payloads at rest with AES-256-GCM under this 32-byte key (raw or 64 hex digits; e.g. head -c 32 /dev/urandom > key)")
	insecureOK := fs.Bool("insecure", false, "serve in plain text without authentication (tests and isolated labs only)")
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
	switch {
	case *caDir != "":
		if cfg.CA, err = tlsca.Load(*caDir); err != nil {
			cli.Fatal("ferry-ps", err)
		}
		if cfg.TLS, err = tlsca.Config(filepath.Join(*caDir, "ps"), false); err != nil {
			cli.Fatal("ferry-ps", err)
		}
		// Every handshake is checked against the CA's revocation list.
		cfg.TLS = tlsca.WithRevocations(cfg.TLS, filepath.Join(*caDir, tlsca.RevokedFile))
		cfg.IdentityDir = filepath.Join(*caDir, "ps")
		if cfg.MasterTargetTLS, err = tlsca.Config(filepath.Join(*caDir, "ps"), false); err != nil {
			cli.Fatal("ferry-ps", err)
		}
	case *insecureOK:
		log.Warn("--insecure: serving in plain text without authentication; anyone who reaches the port can read and write replicas and run failovers")
	default:
		cli.Fatal("ferry-ps", fmt.Errorf("no TLS: pass --ca DIR (create it with 'ferry-ps ca init --ca DIR') or --insecure for plain text"))
	}
	if *keyFile != "" {
		if cfg.EncryptionKey, err = journal.ReadKeyFile(*keyFile); err != nil {
			cli.Fatal("ferry-ps", err)
		}
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	switch *compute {
	case "hook":
	case "libvirt":
		// QEMU opens failed-over disks by path under the data directory.
		if err := os.MkdirAll(cfg.DataDir, 0o711); err != nil {
			cli.Fatal("ferry-ps", err)
		}
		if err := os.Chmod(cfg.DataDir, 0o711); err != nil {
			cli.Fatal("ferry-ps", err)
		}
		if lv.Dir == "" {
			lv.Dir = filepath.Join(cfg.DataDir, "libvirt")
		}
		lv.Logger = log
		lc, err := processserver.NewLibvirtCompute(ctx, lv)
		if err != nil {
			cli.Fatal("ferry-ps", err)
		}
		defer lc.Close()
		cfg.Compute = lc
	default:
		cli.Fatal("ferry-ps", fmt.Errorf("--compute %q: want libvirt or hook", *compute))
	}
	srv, err := processserver.New(cfg)
	if err != nil {
		cli.Fatal("ferry-ps", err)
	}
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

func caCmd(args []string) {
	if len(args) == 0 || (args[0] != "init" && args[0] != "issue" && args[0] != "revoke") {
		cli.Usage(usage)
	}
	fs := flag.NewFlagSet("ca "+args[0], flag.ExitOnError)
	dir := fs.String("ca", "", "the CA directory")
	hosts := fs.String("host", "", "comma-separated host names and IP addresses the certificate is for")
	role := fs.String("role", "", "issue: operator, mt (master target) or ps (process server)")
	name := fs.String("name", "", "issue: the holder's name")
	out := fs.String("out", "", "issue: directory for cert.pem, key.pem and ca.crt")
	ttl := fs.Duration("ttl", tlsca.IssuedLifetime, "issue: how long the certificate is valid")
	certFile := fs.String("cert", "", "revoke: the certificate (PEM) to revoke")
	reason := fs.String("reason", "", "revoke: why, for the record")
	fs.Parse(args[1:])
	if *dir == "" {
		cli.Fatal("ferry-ps ca", fmt.Errorf("--ca DIR is required"))
	}
	var hs []string
	for _, h := range strings.Split(*hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			hs = append(hs, h)
		}
	}
	if args[0] == "revoke" {
		ca, err := tlsca.Load(*dir)
		if err != nil {
			cli.Fatal("ferry-ps ca revoke", err)
		}
		if *certFile == "" {
			cli.Fatal("ferry-ps ca revoke", fmt.Errorf("--cert FILE is required"))
		}
		c, err := tlsca.ReadCert(*certFile)
		if err != nil {
			cli.Fatal("ferry-ps ca revoke", err)
		}
		if err := ca.Revoke(c, *reason); err != nil {
			cli.Fatal("ferry-ps ca revoke", err)
		}
		id, _ := tlsca.IdentityOf(c)
		fmt.Printf("%s (serial %s) revoked: servers reading %s refuse it from their next handshake\n", id, c.SerialNumber.Text(16), filepath.Join(*dir, tlsca.RevokedFile))
		return
	}
	if args[0] == "init" {
		ca, err := tlsca.Init(*dir, append([]string{"localhost", "127.0.0.1", "::1"}, hs...))
		if err != nil {
			cli.Fatal("ferry-ps ca init", err)
		}
		fmt.Printf("CA created in %s (fingerprint %s); the server's certificate is in %s\n", *dir, ca.Fingerprint(), filepath.Join(*dir, "ps"))
		return
	}
	switch *role {
	case tlsca.RoleOperator, tlsca.RoleAdmin, tlsca.RoleMasterTarget, tlsca.RoleServer:
	case tlsca.RoleAgent:
		if len(hs) == 0 {
			cli.Fatal("ferry-ps ca issue", fmt.Errorf("--role agent is issued only with --host, to serve an agent's NBD front end over TLS (agents enroll with a token)"))
		}
	default:
		cli.Fatal("ferry-ps ca issue", fmt.Errorf("--role %q: want operator, admin, mt, ps, or agent with --host", *role))
	}
	if *name == "" || *out == "" {
		cli.Fatal("ferry-ps ca issue", fmt.Errorf("--name and --out are required"))
	}
	ca, err := tlsca.Load(*dir)
	if err != nil {
		cli.Fatal("ferry-ps ca issue", err)
	}
	if err := ca.IssueFor(*out, tlsca.Identity{Role: *role, Name: *name}, hs, *ttl); err != nil {
		cli.Fatal("ferry-ps ca issue", err)
	}
	fmt.Printf("%s/%s: key and certificate in %s\n", *role, *name, *out)
}

func enrollCmd(args []string) {
	fs := flag.NewFlagSet("enroll", flag.ExitOnError)
	dir := fs.String("ca", "", "the CA directory")
	vm := fs.String("vm", "", "the VM the agent will replicate")
	ttl := fs.Duration("ttl", time.Hour, "how long the token can be used (once)")
	fs.Parse(args)
	if *dir == "" || *vm == "" {
		cli.Fatal("ferry-ps enroll", fmt.Errorf("--ca and --vm are required"))
	}
	ca, err := tlsca.Load(*dir)
	if err != nil {
		cli.Fatal("ferry-ps enroll", err)
	}
	token, err := ca.NewToken(*vm, *ttl)
	if err != nil {
		cli.Fatal("ferry-ps enroll", err)
	}
	fmt.Println(token)
}
