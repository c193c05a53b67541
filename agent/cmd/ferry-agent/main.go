// Command ferry-agent protects one VM's disks: it replicates their changes
// to a Ferry process server.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/pkg/nbd"
	"github.com/ferrydr/ferry/pkg/proc"
	"github.com/ferrydr/ferry/pkg/tlsca"
	"github.com/ferrydr/ferry/pkg/virt"
	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

func main() {
	root := cli.Root("ferry-agent", "Ferry's agent: replicates one VM's disks", `
ferry-agent replicates one VM's disks to a Ferry process server.

Exit codes: 0 done, 1 failed, 2 wrong command line or configuration.`)
	run, _ := runCmd()
	root.AddCommand(run, configCmd())
	cli.Execute(root)
}

// configCmd is ferry-agent config check.
func configCmd() *cobra.Command {
	return settings.CheckCommand("", "opens each disk read-only to see that it can be read", func() (*pflag.FlagSet, func() error) {
		rc, o := runCmd()
		return rc.Flags(), func() error {
			if _, err := cli.Logger(*o.level, *o.logFormat); err != nil {
				return err
			}
			closeDisks, err := o.openDisks(true)
			defer closeDisks()
			if err != nil {
				return &cli.UsageError{Err: err}
			}
			o.cfg.Mode = agent.ModeScan
			if *o.nbdListen != "" {
				o.cfg.Mode = agent.ModeSplitter
			}
			o.setHooks(nil)
			// --ps a,b,c: the first, then the others of the cluster.
			if ps := strings.Split(o.cfg.Target, ","); len(ps) > 1 {
				o.cfg.Target, o.cfg.Targets = strings.TrimSpace(ps[0]), nil
				for _, p := range ps[1:] {
					if p = strings.TrimSpace(p); p != "" {
						o.cfg.Targets = append(o.cfg.Targets, p)
					}
				}
			}
			if err := o.cfg.Validate(); err != nil {
				return &cli.UsageError{Err: err}
			}
			return nil
		}
	})
}

// options are ferry-agent run's flags, with the agent's configuration.
type options struct {
	cfg           agent.Config
	disks         cli.Repeated
	config        *string
	metrics       *string
	nbdListen     *string
	nbdTLS        *string
	nbdInsecure   *bool
	freezeHook    *string
	thawHook      *string
	shutdownHook  *string
	libvirtDomain *string
	libvirtURI    *string
	machineFile   *string
	tlsDir        *string
	tokenFile     *string
	insecureOK    *bool
	level         *string
	logFormat     *string
}

// settings are ferry-agent run's configuration file and environment.
var settings = cli.Settings{ConfigFlag: "config", EnvPrefix: "FERRY_AGENT"}

// runCmd returns ferry-agent run with its flags bound to new options.
func runCmd() (*cobra.Command, *options) {
	o := &options{cfg: agent.DefaultConfig()}
	c := &cobra.Command{
		Use:   "run --ps ADDR --vm NAME --disk NAME=PATH [--disk ...] --state DIR [flags]",
		Short: "protect the disks until stopped",
		Long: `
Replicates the disks to the process server. The first run copies every disk
(skipping all-zero blocks and holes); later runs send only changes.

With --nbd-listen the disks are served over NBD (export names are the disk
names) and the machine runs on them: every write is captured in order and a
crash-consistent point is cut as the VM's replication policy says (ferryctl
policy), or every --crash-interval when given. Nothing else may write
the disks then. Without it the disks are scanned every --scan-interval: each
64 KiB chunk whose hash changed is sent, and a point is cut after every pass
that found changes (and every --crash-interval when nothing changed); such a
point holds the disks as the pass read them, so quiesce the writer (fsfreeze)
for a point that is exactly one moment of a disk being written. A pass skips
an image file whose size, times and inode have not changed since the last
pass read it; --scan-rate bounds how fast passes and resyncs read.

SIGTERM or SIGINT waits up to 10s for acknowledgements, then saves what is
unsent so that the next run continues without a full resync.

Every flag is also a setting of the --config file (YAML; the same names,
"disk" a list) and of the environment (FERRY_AGENT_PS, FERRY_AGENT_VM, ...):
a flag wins over the environment, the environment over the file.`,
		Args: cli.NoArgs,
	}
	fs := c.Flags()
	fs.SortFlags = false
	o.config = fs.String("config", "", "YAML file of settings (e.g. /etc/ferry/agent-NAME.yaml)")
	fs.StringVar(&o.cfg.Target, "ps", "", "process server address (host:port); in a cluster of process servers, several separated by commas, tried in turn (an agent is sent on to its VM's own)")
	fs.StringVar(&o.cfg.VM, "vm", "", "name of the protected VM")
	fs.Var(&o.disks, "disk", "a disk as NAME=PATH (image file or block device); repeat for each disk")
	fs.StringVar(&o.cfg.StateDir, "state", "", "directory for the agent's state (bitmaps, scan tables)")
	fs.DurationVar(&o.cfg.CrashInterval, "crash-interval", o.cfg.CrashInterval, "cut a crash-consistent recovery point this often (1s or more); the VM's replication policy replaces it unless --crash-interval or --app-interval is given")
	fs.Uint64Var(&o.cfg.Epoch, "epoch", o.cfg.Epoch, "epoch of the replication direction, as reprotect prints it")
	fs.DurationVar(&o.cfg.ScanInterval, "scan-interval", o.cfg.ScanInterval, "time between scans of the disks for changes")
	fs.Int64Var(&o.cfg.ScanRate, "scan-rate", 0, "bytes per second that scans and resyncs read the disks at most (0: unbounded; at least 1 MiB/s)")
	fs.Int64Var(&o.cfg.QueueBytes, "queue-bytes", o.cfg.QueueBytes, "bound of the change queue before falling back to the dirty bitmap")
	fs.Int64Var(&o.cfg.WindowBytes, "window-bytes", o.cfg.WindowBytes, "bound of data sent and not yet acknowledged")
	o.metrics = fs.String("metrics", "", "admin address for /metrics (empty: off)")
	o.nbdListen = fs.String("nbd-listen", "", "serve the disks over NBD on unix:PATH (mode 0600; only this user, root and, with --libvirt-domain, QEMU's user may connect) or host:port (needs --nbd-tls-dir or --nbd-insecure) and capture every write (write splitter) instead of scanning")
	o.nbdTLS = fs.String("nbd-tls-dir", "", "serve --nbd-listen host:port with TLS (NBD STARTTLS) from this identity, issued with 'ferry-ps ca issue --role agent --name VM --host HOST'; clients present an operator or admin certificate, or this VM's agent certificate")
	o.nbdInsecure = fs.Bool("nbd-insecure", false, "serve --nbd-listen host:port in plain text without authentication: anyone who reaches the port can read and write the protected disks")
	fs.DurationVar(&o.cfg.AppInterval, "app-interval", 0, "cut an app-consistent point this often through --freeze-hook and --thaw-hook (needs --nbd-listen; 0: off)")
	o.freezeHook = fs.String("freeze-hook", "", "command that quiesces the application (flush and hold writes, e.g. fsfreeze -f /srv), bounded by 10s")
	o.thawHook = fs.String("thaw-hook", "", "command that lets the application go on (e.g. fsfreeze -u /srv); runs whenever the freeze hook ran")
	o.shutdownHook = fs.String("shutdown-hook", "", "command that shuts the protected machine down when a planned failover asks (exit 0: it is down)")
	o.libvirtDomain = fs.String("libvirt-domain", "", "the protected machine is this libvirt domain: its hardware is read from libvirt and sent to the process server, app-consistent points freeze it through its QEMU guest agent and a planned failover shuts it down (unless hooks are given); with --nbd-listen unix:PATH the socket is made for QEMU's user")
	o.libvirtURI = fs.String("libvirt-uri", "qemu:///system", "libvirt of --libvirt-domain")
	o.machineFile = fs.String("machine", "", "JSON file describing the machine for failover checks (fields of ferry.v1.MachineInfo, e.g. {\"os\":\"linux\",\"dhcp\":true})")
	o.tlsDir = fs.String("tls-dir", "", "the agent's TLS identity (cert.pem, key.pem, ca.crt; default STATE/tls once enrolled)")
	o.tokenFile = fs.String("token-file", "", "file holding a single-use enrollment token from 'ferry-ps enroll' ('-': standard input; or set FERRY_ENROLL_TOKEN): gets the agent's certificate into --tls-dir first. Not a flag value: command lines are visible to every user in ps")
	o.insecureOK = fs.Bool("insecure", false, "talk to the process server in plain text without authentication (tests and isolated labs only)")
	o.level = fs.String("log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&o.cfg.Heartbeat, "heartbeat", o.cfg.Heartbeat, "how often the agent says it is alive when it has nothing to send; the process server marks the VM critical after 3 missed")
	fs.DurationVar(&o.cfg.AnswerTimeout, "answer-timeout", o.cfg.AnswerTimeout, "how long the agent waits to hear from the process server while it waits for an answer (to its hello, or to data sent); past it the stream is taken for stalled and opened again on a new connection")
	fs.Int64Var(&o.cfg.MaxBandwidth, "max-bandwidth", 0, "bytes per second the agent sends at most (0: no limit), as a process server's throttle would")
	o.logFormat = fs.String("log-format", "text", "text or json (one object per line)")
	c.RunE = func(c *cobra.Command, _ []string) error {
		if _, err := settings.Apply(c.Flags()); err != nil {
			return err
		}
		if c.Flags().Changed("crash-interval") || c.Flags().Changed("app-interval") {
			// Frequencies given here win over the process server's policy.
			o.cfg.IgnorePolicy = true
		}
		o.cfg.Mode = agent.ModeScan
		if *o.nbdListen != "" {
			o.cfg.Mode = agent.ModeSplitter
		}
		return run(o)
	}
	return c, o
}

// run protects the disks until a signal, or until the agent stops.
func run(o *options) error {
	log, err := cli.Logger(*o.level, *o.logFormat)
	if err != nil {
		return err
	}
	o.cfg.Logger = log
	closeDisks, err := o.openDisks(false)
	defer closeDisks()
	if err != nil {
		return err
	}
	domain, closeDomain, err := o.describeMachine(log)
	defer closeDomain()
	if err != nil {
		return err
	}
	o.setHooks(domain)
	tlsDir, creds, err := o.identity(log)
	if err != nil {
		return err
	}
	o.cfg.DialOptions = []grpc.DialOption{creds}
	reg := prometheus.NewRegistry()
	o.cfg.Registerer = reg
	registerExpiry(reg, tlsDir)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_agent_build_info", Help: "The agent's build: 1, with its version.",
		ConstLabels: prometheus.Labels{"version": cli.Version(), "vm": o.cfg.VM}}, func() float64 { return 1 }))
	a, err := agent.New(o.cfg)
	if err != nil {
		return err
	}
	stopMetrics, err := serveMetrics(*o.metrics, reg)
	if err != nil {
		return err
	}
	defer stopMetrics()
	ctx, stop := cli.SignalContext()
	defer stop()
	if err := a.Open(ctx); err != nil {
		return err
	}
	if tlsDir != "" {
		go renewLoop(ctx, log, o.cfg.Target, tlsDir, creds) // ends with ctx
	}
	nbdSrv, err := o.serveFrontEnd(log, a, domain)
	if err != nil {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return errors.Join(err, a.Close(cctx))
	}
	select {
	case <-ctx.Done():
		log.Info("stopping")
	case <-a.Done():
	}
	if nbdSrv != nil {
		// The machine's disks go away first, so nothing is written after
		// the agent saved its state.
		nbdSrv.Close()
	}
	cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cerr := a.Close(cctx)
	return errors.Join(a.Err(), cerr)
}

// openDisks opens every --disk NAME=PATH (only for reading, to check
// them); the returned func closes them.
func (o *options) openDisks(check bool) (func(), error) {
	var opened []*blockdev.File
	closeAll := func() {
		for _, f := range opened {
			f.Close()
		}
	}
	for _, d := range o.disks {
		name, path, ok := strings.Cut(d, "=")
		if !ok || name == "" || path == "" {
			return closeAll, cli.Usagef("disk %q: want NAME=PATH", d)
		}
		dev, err := blockdev.OpenFile(path, check || *o.nbdListen == "")
		if err != nil {
			return closeAll, err
		}
		opened = append(opened, dev)
		o.cfg.Disks = append(o.cfg.Disks, agent.Disk{Name: name, Device: dev})
	}
	return closeAll, nil
}

// describeMachine fills in what the failover checks need to know of the
// machine: from libvirt (--libvirt-domain), a JSON file (--machine), or
// the little the agent knows itself. The returned func closes libvirt.
func (o *options) describeMachine(log *slog.Logger) (*agent.LibvirtDomain, func(), error) {
	done := func() {}
	// Scanning its own disks, the agent runs on the machine it protects;
	// serving them over NBD it runs beside it and does not know its OS.
	o.cfg.Machine = &ferryv1.MachineInfo{}
	if *o.nbdListen == "" {
		o.cfg.Machine.Os = runtime.GOOS
	}
	var domain *agent.LibvirtDomain
	if *o.libvirtDomain != "" {
		if *o.machineFile != "" {
			return nil, done, fmt.Errorf("--machine and --libvirt-domain both describe the machine: give one")
		}
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := virt.Dial(dctx, *o.libvirtURI)
		cancel()
		if err != nil {
			return nil, done, err
		}
		done = func() { conn.Close() }
		domain = &agent.LibvirtDomain{Conn: conn, Name: *o.libvirtDomain, ShutdownTimeout: time.Minute}
		paths := map[string]string{}
		for _, d := range o.disks {
			name, path, _ := strings.Cut(d, "=")
			paths[name] = path
		}
		if o.cfg.Machine, err = domain.Describe(paths, *o.nbdListen != ""); err != nil {
			return nil, done, err
		}
		log.Info("machine read from libvirt", "domain", *o.libvirtDomain, "os", o.cfg.Machine.GetOs(),
			"vcpus", o.cfg.Machine.GetHardware().GetVcpus(), "memory_mib", o.cfg.Machine.GetHardware().GetMemoryMib(),
			"guest_agent", o.cfg.Machine.GetHardware().GetGuestAgent())
	}
	if *o.machineFile != "" {
		raw, err := os.ReadFile(*o.machineFile)
		if err == nil {
			err = protojson.Unmarshal(raw, o.cfg.Machine)
		}
		if err != nil {
			return nil, done, fmt.Errorf("machine: %w", err)
		}
	}
	return domain, done, nil
}

// setHooks chooses how the machine is frozen, thawed and shut down: the
// operator's hooks, else libvirt's guest agent and shutdown.
func (o *options) setHooks(domain *agent.LibvirtDomain) {
	hook := func(cmd string) func(context.Context) error {
		if cmd == "" {
			return nil
		}
		return func(ctx context.Context) error { return runHook(ctx, cmd) }
	}
	o.cfg.Freeze, o.cfg.Thaw = hook(*o.freezeHook), hook(*o.thawHook)
	if domain != nil && *o.freezeHook == "" && o.cfg.Machine.GetHardware().GetGuestAgent() {
		o.cfg.Freeze, o.cfg.Thaw = domain.Freeze, domain.Thaw
	}
	if domain != nil && *o.shutdownHook == "" {
		o.cfg.ShutdownMachine = domain.Shutdown
	}
	if *o.shutdownHook != "" {
		o.cfg.ShutdownMachine = hook(*o.shutdownHook)
	}
}

// identity enrolls the agent when it has a token and no certificate yet,
// and returns its TLS directory ("" in plain text) and credentials.
func (o *options) identity(log *slog.Logger) (string, grpc.DialOption, error) {
	tlsDir := *o.tlsDir
	if tlsDir == "" && !*o.insecureOK {
		tlsDir = filepath.Join(o.cfg.StateDir, "tls")
	}
	token, err := readToken(*o.tokenFile)
	if err != nil {
		return "", nil, err
	}
	if token != "" && !tlsca.HasIdentity(tlsDir) {
		if err := enroll(log, o.cfg.Target, token, tlsDir, o.cfg.VM); err != nil {
			return "", nil, err
		}
	}
	if *o.insecureOK {
		tlsDir = ""
	} else if !tlsca.HasIdentity(tlsDir) {
		return "", nil, fmt.Errorf("no certificate in %s: enroll with --token-file or FERRY_ENROLL_TOKEN (ferry-ps enroll --vm %s) or pass --insecure for plain text", tlsDir, o.cfg.VM)
	}
	creds, err := tlsca.DialOption(tlsDir, *o.insecureOK, log)
	return tlsDir, creds, err
}

// enroll gets the agent's certificate with token. The process server may
// not be up yet: it keeps trying while it is unreachable; a refused token
// is final.
func enroll(log *slog.Logger, target, token, dir, wantVM string) error {
	var vm string
	var err error
	for backoff := time.Second; ; backoff = min(2*backoff, 30*time.Second) {
		ectx, cancel := context.WithTimeout(context.Background(), time.Minute)
		vm, err = tlsca.Enroll(ectx, target, token, dir)
		cancel()
		if c := status.Code(err); err == nil || (c != codes.Unavailable && c != codes.DeadlineExceeded) {
			break
		}
		log.Warn("enroll: process server unreachable; trying again", "err", err, "in", backoff)
		time.Sleep(backoff)
	}
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	if vm != wantVM {
		return fmt.Errorf("enroll: the token was for vm %s, not %s", vm, wantVM)
	}
	log.Info("enrolled: certificate stored", "dir", dir, "vm", vm)
	return nil
}

// registerExpiry exports the agent certificate's time left.
func registerExpiry(reg *prometheus.Registry, tlsDir string) {
	if tlsDir == "" {
		return
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_agent_certificate_expiry_seconds",
		Help: "Seconds until the agent's certificate expires (it renews itself when a third of its lifetime is left)."},
		func() float64 {
			_, na, err := tlsca.Expiry(tlsDir)
			if err != nil {
				return 0
			}
			return time.Until(na).Seconds()
		}))
}

// serveMetrics serves /metrics on addr (nothing when empty); the returned
// func stops it.
func serveMetrics(addr string, reg *prometheus.Registry) (func(), error) {
	if addr == "" {
		return func() {}, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return func() {}, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(l) }()
	return func() { srv.Close(); <-done }, nil
}

// serveFrontEnd serves the disks over NBD with --nbd-listen (the machine
// runs on them; every write goes through the splitter).
func (o *options) serveFrontEnd(log *slog.Logger, a *agent.Agent, domain *agent.LibvirtDomain) (*nbd.Server, error) {
	if *o.nbdListen == "" {
		return nil, nil
	}
	access, err := frontEndAccess(*o.nbdListen, *o.nbdTLS, *o.nbdInsecure, o.cfg.VM)
	if err != nil {
		return nil, err
	}
	l, err := nbd.Listen(*o.nbdListen)
	if err != nil {
		return nil, err
	}
	if sock, ok := strings.CutPrefix(*o.nbdListen, "unix:"); ok && domain != nil {
		uid, err := domain.OwnSocket(sock)
		if err != nil {
			l.Close()
			return nil, err
		}
		access.UIDs = append(access.UIDs, uid)
	}
	srv := nbd.NewServer(log, access)
	for _, e := range a.NBDExports() {
		srv.Add(e)
	}
	go srv.Serve(l) // srv.Close waits for it
	log.Info("disks served over NBD", "listen", l.Addr().String())
	return srv, nil
}

// frontEndAccess says who may use the disks the agent serves: on a Unix
// socket its own user and root (and QEMU's user, added by the caller); on
// TCP clients with certificates of the deployment's CA, or anyone with
// --nbd-insecure.
func frontEndAccess(listen, tlsDir string, insecureOK bool, vm string) (nbd.Access, error) {
	if strings.HasPrefix(listen, "unix:") {
		return nbd.Access{}, nil
	}
	if tlsDir == "" {
		if !insecureOK {
			return nbd.Access{}, fmt.Errorf("--nbd-listen %s: %w (--nbd-tls-dir DIR, or --nbd-insecure)", listen, nbd.ErrPlainTCP)
		}
		return nbd.Access{Insecure: true}, nil
	}
	cfg, err := tlsca.Config(tlsDir, true)
	if err != nil {
		return nbd.Access{}, fmt.Errorf("--nbd-tls-dir: %w", err)
	}
	return nbd.Access{TLS: cfg, Authorize: func(st tls.ConnectionState) error {
		id, err := tlsca.IdentityOf(st.VerifiedChains[0][0])
		if err != nil {
			return err
		}
		switch {
		case id.Role == tlsca.RoleOperator, id.Role == tlsca.RoleAdmin:
		case id.Role == tlsca.RoleAgent && id.Name == vm:
		default:
			return fmt.Errorf("%s may not use the disks of %s", id, vm)
		}
		return nil
	}}, nil
}

// readToken reads the enrollment token from a file, standard input ("-")
// or FERRY_ENROLL_TOKEN.
func readToken(file string) (string, error) {
	var raw []byte
	var err error
	switch file {
	case "":
		return strings.TrimSpace(os.Getenv("FERRY_ENROLL_TOKEN")), nil
	case "-":
		raw, err = io.ReadAll(io.LimitReader(os.Stdin, 4096))
	default:
		raw, err = os.ReadFile(file)
	}
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	return strings.TrimSpace(string(raw)), nil
}

// renewLoop renews the agent's certificate when a third of its lifetime
// is left, checking every hour; the connection picks the new one up at
// its next handshake.
func renewLoop(ctx context.Context, log *slog.Logger, target, dir string, creds grpc.DialOption) {
	for {
		nb, na, err := tlsca.Expiry(dir)
		if err == nil && time.Until(na) < na.Sub(nb)/3 {
			err = func() error {
				conn, err := grpc.NewClient(target, creds, wire.Checked())
				if err != nil {
					return err
				}
				defer conn.Close()
				rctx, cancel := context.WithTimeout(ctx, time.Minute)
				defer cancel()
				until, err := tlsca.RenewIdentity(rctx, conn, dir)
				if err == nil {
					log.Info("certificate renewed", "dir", dir, "valid_until", until)
				}
				return err
			}()
		}
		if err != nil {
			log.Warn("certificate renewal", "dir", dir, "expires", na, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Hour):
		}
	}
}

// runHook runs an operator's hook with sh in its own process group: when
// ctx ends (the freeze hook's 10 s bound) the group is killed, children
// that hold its output included, so the hook cannot hold the machine's
// writes longer.
func runHook(ctx context.Context, cmd string) error {
	_, err := proc.Run(ctx, proc.Command{What: cmd, Shell: cmd, WaitDelay: 2 * time.Second})
	return err
}
