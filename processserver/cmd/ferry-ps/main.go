// Command ferry-ps runs Ferry's process server: it receives replication
// streams from agents, keeps recovery points and serves the recovery API.
package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/pkg/cluster"
	"github.com/ferrydr/ferry/pkg/ingest"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/objstore"
	"github.com/ferrydr/ferry/pkg/tier"
	"github.com/ferrydr/ferry/pkg/tlsca"
	"github.com/ferrydr/ferry/processserver"
	"github.com/ferrydr/ferry/processserver/console"
)

func main() {
	root := cli.Root("ferry-ps", "Ferry's process server at the recovery site", `
ferry-ps runs Ferry's process server at the recovery site: it receives
replication streams from agents into a journal of recovery points and serves
the recovery API (ferryctl) over TLS 1.3 with client certificates.

Exit codes: 0 done, 1 failed, 2 wrong command line or configuration.`)
	serve, _ := serveCmd()
	root.AddCommand(serve, configCmd(), caCmd(), enrollCmd())
	cli.Execute(root)
}

// serveOptions are ferry-ps serve's flags, with the server's configuration.
type serveOptions struct {
	cfg        processserver.Config
	lv         processserver.LibvirtConfig
	compute    string
	caDir      string
	keyFile    string
	insecureOK bool
	level      string
	logFormat  string
	config     string
	console    console.Config
	store      storeOptions
}

// storeOptions are the object store's and the cluster's flags.
type storeOptions struct {
	url, endpoint, region string
	accessKey, secretFile string
	etcd                  string
}

// settings are ferry-ps serve's configuration file and environment.
var settings = cli.Settings{ConfigFlag: "config", EnvPrefix: "FERRY_PS"}

// serveCmd returns ferry-ps serve with its flags bound to new options.
func serveCmd() (*cobra.Command, *serveOptions) {
	o := &serveOptions{cfg: processserver.DefaultConfig()}
	c := &cobra.Command{
		Use:   "serve [flags]",
		Short: "receive replication and serve the recovery API",
		Long: `Receives replication streams into a journal under --data and serves the
recovery API on --listen. SIGTERM or SIGINT stops it cleanly: open streams
commit what they had verified first.

Every flag is also a setting of the --config file (YAML; the same names, or
nested: "libvirt: {uri: ...}" is libvirt-uri) and of the environment
(FERRY_PS_LISTEN, FERRY_PS_LIBVIRT_URI, ...): a flag wins over the
environment, the environment over the file. 'ferry-ps config check' checks a
file without serving.`,
		Args: cli.NoArgs,
	}
	cfg, lv := &o.cfg, &o.lv
	fs := c.Flags()
	fs.SortFlags = false
	fs.StringVar(&o.config, "config", "", "YAML file of settings (e.g. /etc/ferry/ps.yaml)")
	fs.StringVar(&cfg.DataDir, "data", cfg.DataDir, "directory of the journal (created if missing)")
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "gRPC address for agents and ferryctl")
	fs.StringVar(&cfg.MetricsListen, "metrics", cfg.MetricsListen, "admin address for /metrics (empty: off)")
	fs.BoolVar(&cfg.Pprof, "pprof", false, "also serve Go's profiler under /debug/pprof/ on the --metrics address")
	fs.StringVar(&cfg.Codec, "codec", cfg.Codec, "compression of journaled data: zstd, s2 (about 2x faster, ~7% larger) or none")
	fs.StringVar(&o.compute, "compute", "hook", "how failover creates VMs: libvirt (built in; see --libvirt-*) or hook (--compute-hook, for other hypervisors)")
	fs.StringVar(&cfg.ComputeHook, "compute-hook", "", "command that creates, starts, stops and deletes VMs at failover (see docs/recovery-guide.md)")
	fs.DurationVar(&cfg.ComputeHookTimeout, "compute-hook-timeout", 10*time.Minute, "longest one call of the compute hook may run; then it is killed with its process group")
	fs.StringVar(&lv.URI, "libvirt-uri", "qemu:///system", "--compute libvirt: the recovery site's libvirt")
	fs.StringVar(&lv.Network, "libvirt-network", "", "--compute libvirt: the recovery network of planned and unplanned failovers when ferryctl names none")
	fs.StringVar(&lv.Dir, "libvirt-dir", "", "--compute libvirt: directory of recovered domains' NBD sockets and console logs, reachable by QEMU's user (default DATA/libvirt)")
	fs.StringVar(&lv.DomainType, "libvirt-domain-type", "", "--compute libvirt: kvm or qemu (default: kvm when /dev/kvm runs guests here, else qemu)")
	fs.StringVar(&lv.Prefix, "libvirt-prefix", "", "--compute libvirt: prefix of the names of domains Ferry creates")
	fs.DurationVar(&lv.ShutdownTimeout, "libvirt-shutdown-timeout", time.Minute, "--compute libvirt: how long a graceful shutdown may take before the domain is destroyed")
	fs.DurationVar(&cfg.ProbeTimeout, "probe-timeout", 3*time.Minute, "how long the readiness probe waits for a failed-over VM to boot, lease an address and answer on SSH or RDP")
	fs.DurationVar(&cfg.Retention, "retention", 24*time.Hour, "retention of the default replication policy when it is first created (VMware-style VMs follow vmware-72h); change policies with ferryctl policy")
	fs.DurationVar(&cfg.RPOThreshold, "rpo-threshold", 15*time.Minute, "RPO alert threshold of the default policies when first created (metric ferry_ps_rpo_alert and an event)")
	fs.DurationVar(&cfg.Heartbeat, "heartbeat", processserver.DefaultHeartbeat, "the heartbeat interval assumed for agents that do not say theirs (ferry-agent --heartbeat does): a VM whose agent is silent for 3 heartbeats is critical")
	fs.DurationVar(&cfg.PlanActionTimeout, "plan-action-timeout", 10*time.Minute, "longest a recovery plan's command action may run; then it is killed with its process group")
	fs.StringVar(&cfg.PlanActionUser, "plan-action-user", "nobody", "user recovery plans' command actions run as (uploading such plans needs an admin certificate)")
	fs.StringArrayVar(&cfg.PlanActionEnv, "plan-action-env", nil, "NAME=VALUE added to the command actions' clean environment (repeatable)")
	fs.StringArrayVar(&cfg.Webhooks, "webhook", nil, "URL that each event is POSTed to as JSON (repeatable; retried with backoff for 10 minutes; https verified against the system's roots)")
	fs.StringVar(&cfg.NBDListen, "nbd-listen", "", "serve recovery points and test-failover disks over NBD on host:port (TLS with STARTTLS and an operator or admin certificate; plain only with --nbd-insecure) or unix:PATH (mode 0600, only this user and root)")
	fs.BoolVar(&cfg.NBDInsecure, "nbd-insecure", false, "serve --nbd-listen host:port in plain text without authentication: anyone who reaches it and knows an export's name can read or write it")
	fs.Int64Var(&cfg.MaxDiskBytes, "max-disk-size", ingest.DefaultMaxDiskBytes, "largest disk (bytes) an agent may declare; larger ones are refused")
	fs.Int64Var(&cfg.ScratchQuota, "scratch-quota", 16<<30, "bytes all writable exports and test-failover disks may write together before their writes fail with ENOSPC")
	fs.StringVar(&cfg.MasterTarget, "master-target", "", "the primary site's master target (host:port), for reprotect and failback")
	fs.DurationVar(&cfg.ProcessInterval, "process-interval", 5*time.Second, "how often received markers are processed into recovery points")
	fs.StringVar(&o.console.Listen, "console-listen", "", "serve the web console over HTTPS on host:port (needs --ca; operators sign in with 'ferryctl console login'); empty: off")
	fs.StringVar(&o.console.URL, "console-url", "", "the console's address in sign-in links, as browsers reach it (https://host:port, a name in the server's certificate); default the --console-listen address")
	fs.DurationVar(&o.console.Session, "console-session", console.DefaultSession, "how long a console sign-in lasts")
	fs.DurationVar(&o.console.TokenTTL, "console-token-ttl", console.DefaultTokenTTL, "how long a sign-in link of 'ferryctl console login' can be used (once)")
	fs.StringVar(&o.store.url, "store", "", "ship every VM's journal to an S3-compatible bucket, s3://BUCKET[/PREFIX], before acknowledging its records: another process server can then take the VM over (see --etcd); empty: the journal file alone")
	fs.StringVar(&o.store.endpoint, "s3-endpoint", "", "--store: the S3 server, https://HOST:PORT (http:// only on a trusted network)")
	fs.StringVar(&o.store.region, "s3-region", "", "--store: the bucket's region (default us-east-1)")
	fs.StringVar(&o.store.accessKey, "s3-access-key", "", "--store: the access key (default $AWS_ACCESS_KEY_ID)")
	fs.StringVar(&o.store.secretFile, "s3-secret-key-file", "", "--store: file holding the secret key (default $AWS_SECRET_ACCESS_KEY)")
	fs.DurationVar(&cfg.StoreTimeout, "store-timeout", tier.DefaultPutTimeout, "--store: longest one put to the bucket may take; then the records it held stay unacknowledged, an event says the store is unavailable, and replication pauses until it answers")
	fs.DurationVar(&cfg.HotWindow, "hot-window", processserver.DefaultHotWindow, "--store: how much of each VM's newest history keeps its payloads on this disk; older records are sealed into large segments in the bucket and read back through the cache")
	fs.Int64Var(&cfg.CacheBytes, "cache-size", tier.DefaultCacheBytes, "--store: bytes of segments kept in memory for reads of records older than the hot window (point exports, test failovers, retention)")
	fs.StringVar(&o.store.etcd, "etcd", "", "share the VMs with the site's other process servers through etcd (HOST:PORT,...; needs --store): each VM served by one, a dead one's VMs taken over by the others from the bucket")
	fs.StringVar(&cfg.Cluster.Name, "cluster-name", "", "--etcd: this process server's name in the cluster (default the host name)")
	fs.StringVar(&cfg.Cluster.Advertise, "cluster-advertise", "", "--etcd: the address agents and ferryctl are sent to for this server's VMs (default --listen's)")
	fs.DurationVar(&cfg.Cluster.TTL, "cluster-ttl", cluster.DefaultTTL, "--etcd: how long this server's VMs stay its own after etcd last heard of it (at least 2s)")
	fs.StringVar(&o.caDir, "ca", "", "the CA directory of ferry-ps ca init: TLS 1.3 with client certificates on every port, and agent enrollment")
	fs.StringVar(&o.keyFile, "key-file", "", "encrypt journal payloads at rest with AES-256-GCM under this 32-byte key (raw or 64 hex digits; e.g. head -c 32 /dev/urandom > key)")
	fs.BoolVar(&o.insecureOK, "insecure", false, "serve in plain text without authentication (tests and isolated labs only)")
	fs.StringVar(&o.level, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "text or json (one object per line)")
	c.RunE = func(c *cobra.Command, _ []string) error { return serve(o, c.Flags()) }
	return c, o
}

// prepare applies the settings and builds the server's configuration
// without starting anything.
func prepare(o *serveOptions) (*slog.Logger, error) {
	log, err := cli.Logger(o.level, o.logFormat)
	if err != nil {
		return nil, err
	}
	cfg := &o.cfg
	cfg.Logger = log
	for _, v := range cfg.PlanActionEnv {
		if !strings.Contains(v, "=") {
			return nil, cli.Usagef("plan-action-env %q: want NAME=VALUE", v)
		}
	}
	// A CA or key that cannot be read is a mistake in the configuration.
	switch {
	case o.caDir != "":
		if cfg.CA, err = tlsca.Load(o.caDir); err != nil {
			return nil, &cli.UsageError{Err: fmt.Errorf("ca: %w", err)}
		}
		if cfg.TLS, err = tlsca.Config(filepath.Join(o.caDir, "ps"), false); err != nil {
			return nil, &cli.UsageError{Err: fmt.Errorf("ca: %w", err)}
		}
		// Every handshake is checked against the CA's revocation list.
		cfg.TLS = tlsca.WithRevocations(cfg.TLS, filepath.Join(o.caDir, tlsca.RevokedFile))
		cfg.IdentityDir = filepath.Join(o.caDir, "ps")
		if cfg.MasterTargetTLS, err = tlsca.Config(filepath.Join(o.caDir, "ps"), false); err != nil {
			return nil, &cli.UsageError{Err: fmt.Errorf("ca: %w", err)}
		}
	case o.insecureOK:
	default:
		return nil, cli.Usagef("no TLS: pass --ca DIR (create it with 'ferry-ps ca init --ca DIR') or --insecure for plain text")
	}
	if o.console.Listen != "" && cfg.TLS == nil {
		return nil, cli.Usagef("console-listen: the console is served over HTTPS only: pass --ca")
	}
	if o.console.Session <= 0 || o.console.TokenTTL <= 0 {
		return nil, cli.Usagef("console-session and console-token-ttl must be positive")
	}
	if o.keyFile != "" {
		if cfg.EncryptionKey, err = journal.ReadKeyFile(o.keyFile); err != nil {
			return nil, &cli.UsageError{Err: fmt.Errorf("key-file: %w", err)}
		}
	}
	switch o.compute {
	case "hook", "libvirt":
	default:
		return nil, cli.Usagef("--compute %q: want libvirt or hook", o.compute)
	}
	if err := cfg.Validate(); err != nil {
		return nil, &cli.UsageError{Err: err}
	}
	// After Validate: the store is opened when serving starts.
	if err := o.store.prepare(cfg); err != nil {
		return nil, err
	}
	return log, nil
}

// serve runs the process server until SIGTERM or SIGINT.
func serve(o *serveOptions, fs *pflag.FlagSet) error {
	if _, err := settings.Apply(fs); err != nil {
		return err
	}
	log, err := prepare(o)
	if err != nil {
		return err
	}
	cfg := o.cfg
	if o.insecureOK {
		log.Warn("--insecure: serving in plain text without authentication; anyone who reaches the port can read and write replicas and run failovers")
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	if o.compute == "libvirt" {
		// QEMU opens failed-over disks by path under the data directory.
		if err := os.MkdirAll(cfg.DataDir, 0o711); err != nil {
			return err
		}
		if err := os.Chmod(cfg.DataDir, 0o711); err != nil {
			return err
		}
		lv := o.lv
		if lv.Dir == "" {
			lv.Dir = filepath.Join(cfg.DataDir, "libvirt")
		}
		lv.Logger = log
		lc, err := processserver.NewLibvirtCompute(ctx, lv)
		if err != nil {
			return err
		}
		defer lc.Close()
		cfg.Compute = lc
	}
	if cfg.Store, err = o.store.openStore(ctx, cfg.EncryptionKey); err != nil {
		return err
	}
	srv, err := processserver.New(cfg)
	if err != nil {
		return err
	}
	var web *console.Console
	if o.console.Listen != "" {
		cc := o.console
		cc.TLS, cc.Server, cc.Logger = cfg.TLS, srv, log
		// A revoked operator's console sessions end at their next request.
		cc.Revoked = tlsca.NewRevocations(filepath.Join(o.caDir, tlsca.RevokedFile)).Check
		if web, err = console.New(cc); err != nil {
			return &cli.UsageError{Err: err}
		}
		srv.SetSignIn(web)
	}
	if err := srv.Open(ctx); err != nil {
		return err
	}
	closing := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), 30*time.Second)
	}
	if web != nil {
		if err := web.Open(ctx); err != nil {
			cctx, cancel := closing()
			defer cancel()
			return errors.Join(err, srv.Close(cctx))
		}
	}
	log.Info("serving", "version", cli.Version(), "listen", srv.Addr(), "metrics", srv.MetricsAddr(), "console", consoleURL(web))
	<-ctx.Done()
	log.Info("stopping")
	cctx, cancel := closing()
	defer cancel()
	if web != nil {
		web.Close(cctx)
	}
	return srv.Close(cctx)
}

// consoleURL names the console's address for the log ("off" without it).
func consoleURL(c *console.Console) string {
	if c == nil {
		return "off"
	}
	return c.URL()
}

// configCmd is ferry-ps config check.
func configCmd() *cobra.Command {
	return settings.CheckCommand("/etc/ferry/ps.yaml", "loads the CA and the key file and checks the codec, the compute choice and the webhooks", func() (*pflag.FlagSet, func() error) {
		sc, o := serveCmd()
		return sc.Flags(), func() error { _, err := prepare(o); return err }
	})
}

// caCmd is ferry-ps ca: the deployment's certificate authority.
func caCmd() *cobra.Command {
	c := cli.Group(&cobra.Command{Use: "ca", Short: "the deployment's CA: create it, issue and revoke certificates"})
	var dir string
	c.PersistentFlags().StringVar(&dir, "ca", "", "the CA directory")
	hostsOf := func(hosts string) []string {
		var hs []string
		for _, h := range strings.Split(hosts, ",") {
			if h = strings.TrimSpace(h); h != "" {
				hs = append(hs, h)
			}
		}
		return hs
	}
	needDir := func() error {
		if dir == "" {
			return cli.Usagef("--ca DIR is required")
		}
		return nil
	}

	var initHosts string
	initCmd := &cobra.Command{
		Use:   "init --ca DIR [--host H,...]",
		Short: "create the deployment's CA and the server's certificate (for localhost, 127.0.0.1 and the hosts given)",
		Args:  cli.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := needDir(); err != nil {
				return err
			}
			ca, err := tlsca.Init(dir, append([]string{"localhost", "127.0.0.1", "::1"}, hostsOf(initHosts)...))
			if err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "CA created in %s (fingerprint %s); the server's certificate is in %s\n", dir, ca.Fingerprint(), filepath.Join(dir, "ps"))
			return nil
		},
	}
	initCmd.Flags().StringVar(&initHosts, "host", "", "comma-separated host names and IP addresses the server's certificate is for")

	var role, name, out, issueHosts string
	var ttl time.Duration
	issue := &cobra.Command{
		Use:   "issue --ca DIR --role operator|admin|mt|ps|agent --name NAME --out DIR [--host H,...] [--ttl D]",
		Short: "issue a key and certificate (ferryctl --tls-dir, ferry-mt --tls-dir); admin certificates may also upload plans with command actions",
		Args:  cli.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := needDir(); err != nil {
				return err
			}
			hs := hostsOf(issueHosts)
			switch role {
			case tlsca.RoleOperator, tlsca.RoleAdmin, tlsca.RoleMasterTarget, tlsca.RoleServer:
			case tlsca.RoleAgent:
				if len(hs) == 0 {
					return cli.Usagef("--role agent is issued only with --host, to serve an agent's NBD front end over TLS (agents enroll with a token)")
				}
			default:
				return cli.Usagef("--role %q: want operator, admin, mt, ps, or agent with --host", role)
			}
			if name == "" || out == "" {
				return cli.Usagef("--name and --out are required")
			}
			ca, err := tlsca.Load(dir)
			if err != nil {
				return err
			}
			if err := ca.IssueFor(out, tlsca.Identity{Role: role, Name: name}, hs, ttl); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "%s/%s: key and certificate in %s\n", role, name, out)
			return nil
		},
	}
	issue.Flags().StringVar(&role, "role", "", "operator, admin, mt (master target), ps (process server), or agent (with --host: an agent's NBD front end)")
	issue.Flags().StringVar(&name, "name", "", "the holder's name")
	issue.Flags().StringVar(&out, "out", "", "directory for cert.pem, key.pem and ca.crt")
	issue.Flags().StringVar(&issueHosts, "host", "", "comma-separated host names and IP addresses the certificate is for")
	issue.Flags().DurationVar(&ttl, "ttl", tlsca.IssuedLifetime, "how long the certificate is valid")

	var certFile, reason string
	revoke := &cobra.Command{
		Use:   "revoke --ca DIR --cert FILE [--reason TEXT]",
		Short: "revoke a certificate: refused at the next handshake (ferry-mt reads the list with --revocations DIR/revoked.json)",
		Args:  cli.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := needDir(); err != nil {
				return err
			}
			if certFile == "" {
				return cli.Usagef("--cert FILE is required")
			}
			ca, err := tlsca.Load(dir)
			if err != nil {
				return err
			}
			cert, err := tlsca.ReadCert(certFile)
			if err != nil {
				return err
			}
			if err := ca.Revoke(cert, reason); err != nil {
				return err
			}
			id, _ := tlsca.IdentityOf(cert)
			fmt.Fprintf(c.OutOrStdout(), "%s (serial %s) revoked: servers reading %s refuse it from their next handshake\n", id, cert.SerialNumber.Text(16), filepath.Join(dir, tlsca.RevokedFile))
			return nil
		},
	}
	revoke.Flags().StringVar(&certFile, "cert", "", "the certificate (PEM) to revoke")
	revoke.Flags().StringVar(&reason, "reason", "", "why, for the record")
	c.AddCommand(initCmd, issue, revoke)
	return c
}

// enrollCmd is ferry-ps enroll: a single-use token for an agent.
func enrollCmd() *cobra.Command {
	var dir, vm string
	var ttl time.Duration
	c := &cobra.Command{
		Use:   "enroll --ca DIR --vm NAME [--ttl 1h]",
		Short: "print a single-use enrollment token for an agent (ferry-agent run --token-file FILE ...)",
		Args:  cli.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if dir == "" || vm == "" {
				return cli.Usagef("--ca and --vm are required")
			}
			ca, err := tlsca.Load(dir)
			if err != nil {
				return err
			}
			token, err := ca.NewToken(vm, ttl)
			if err != nil {
				return err
			}
			fmt.Fprintln(c.OutOrStdout(), token)
			return nil
		},
	}
	c.Flags().StringVar(&dir, "ca", "", "the CA directory")
	c.Flags().StringVar(&vm, "vm", "", "the VM the agent will replicate")
	c.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token can be used (once)")
	return c
}

// prepare checks the object store's and the cluster's flags; the store is
// opened by openStore.
func (so *storeOptions) prepare(cfg *processserver.Config) error {
	if so.etcd != "" {
		for _, e := range strings.Split(so.etcd, ",") {
			if e = strings.TrimSpace(e); e != "" {
				cfg.Cluster.Endpoints = append(cfg.Cluster.Endpoints, e)
			}
		}
		if so.url == "" {
			return cli.Usagef("etcd: a cluster of process servers needs --store, the bucket takeovers restore from")
		}
	}
	if so.url == "" {
		return nil
	}
	if _, _, err := objstore.ParseURL(so.url); err != nil {
		return &cli.UsageError{Err: err}
	}
	if so.endpoint == "" {
		return cli.Usagef("store: --s3-endpoint is required")
	}
	return nil
}

// openStore connects to the bucket of --store; nil without one.
func (so *storeOptions) openStore(ctx context.Context, key []byte) (*objstore.Store, error) {
	if so.url == "" {
		return nil, nil
	}
	bucket, prefix, _ := objstore.ParseURL(so.url)
	sc := objstore.Config{Bucket: bucket, Prefix: prefix, Region: so.region, AccessKey: so.accessKey, SecretKey: os.Getenv("AWS_SECRET_ACCESS_KEY")}
	switch {
	case strings.HasPrefix(so.endpoint, "https://"):
		sc.Endpoint, sc.TLS = strings.TrimPrefix(so.endpoint, "https://"), true
	case strings.HasPrefix(so.endpoint, "http://"):
		sc.Endpoint = strings.TrimPrefix(so.endpoint, "http://")
	default:
		return nil, cli.Usagef("s3-endpoint %q: want https://HOST:PORT or http://HOST:PORT", so.endpoint)
	}
	if sc.AccessKey == "" {
		sc.AccessKey = os.Getenv("AWS_ACCESS_KEY_ID")
	}
	if so.secretFile != "" {
		b, err := os.ReadFile(so.secretFile)
		if err != nil {
			return nil, &cli.UsageError{Err: fmt.Errorf("s3-secret-key-file: %w", err)}
		}
		sc.SecretKey = strings.TrimSpace(string(b))
	}
	// Objects are sealed under a key of their own, derived from the
	// journal's: the same secret, never the same key for two uses.
	if key != nil {
		k := sha256.Sum256(append([]byte("ferry object store v1\x00"), key...))
		sc.Key = k[:]
	}
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := objstore.Open(octx, sc)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", so.url, err)
	}
	return st, nil
}
