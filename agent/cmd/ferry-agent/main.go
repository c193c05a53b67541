// Command ferry-agent protects one VM's disks: it replicates their changes
// to a Ferry process server.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
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
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

const usage = `
ferry-agent replicates one VM's disks to a Ferry process server.

Usage:
  ferry-agent run [flags]    protect the disks until stopped

Run 'ferry-agent run --help' for the flags.
`

func main() {
	if len(os.Args) < 2 || os.Args[1] != "run" {
		cli.Usage(usage)
	}
	cfg := agent.DefaultConfig()
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	var disks cli.Repeated
	fs.StringVar(&cfg.Target, "ps", "", "process server address (host:port)")
	fs.StringVar(&cfg.VM, "vm", "", "name of the protected VM")
	fs.Var(&disks, "disk", "a disk as NAME=PATH (image file or block device); repeat for each disk")
	fs.StringVar(&cfg.StateDir, "state", "", "directory for the agent's state (bitmaps, scan tables)")
	fs.DurationVar(&cfg.CrashInterval, "crash-interval", cfg.CrashInterval, "cut a crash-consistent recovery point this often (1s or more); the VM's replication policy replaces it unless --crash-interval or --app-interval is given")
	fs.Uint64Var(&cfg.Epoch, "epoch", cfg.Epoch, "epoch of the replication direction, as reprotect prints it")
	fs.DurationVar(&cfg.ScanInterval, "scan-interval", cfg.ScanInterval, "time between scans of the disks for changes")
	fs.Int64Var(&cfg.QueueBytes, "queue-bytes", cfg.QueueBytes, "bound of the change queue before falling back to the dirty bitmap")
	fs.Int64Var(&cfg.WindowBytes, "window-bytes", cfg.WindowBytes, "bound of data sent and not yet acknowledged")
	metrics := fs.String("metrics", "", "admin address for /metrics (empty: off)")
	nbdListen := fs.String("nbd-listen", "", "serve the disks over NBD on unix:PATH (mode 0600; only this user, root and, with --libvirt-domain, QEMU's user may connect) or host:port (needs --nbd-tls-dir or --nbd-insecure) and capture every write (write splitter) instead of scanning")
	nbdTLS := fs.String("nbd-tls-dir", "", "serve --nbd-listen host:port with TLS (NBD STARTTLS) from this identity, issued with 'ferry-ps ca issue --role agent --name VM --host HOST'; clients present an operator or admin certificate, or this VM's agent certificate")
	nbdInsecure := fs.Bool("nbd-insecure", false, "serve --nbd-listen host:port in plain text without authentication: anyone who reaches the port can read and write the protected disks")
	fs.DurationVar(&cfg.AppInterval, "app-interval", 0, "cut an app-consistent point this often through --freeze-hook and --thaw-hook (needs --nbd-listen; 0: off)")
	freezeHook := fs.String("freeze-hook", "", "command that quiesces the application (flush and hold writes, e.g. fsfreeze -f /srv), bounded by 10s")
	thawHook := fs.String("thaw-hook", "", "command that lets the application go on (e.g. fsfreeze -u /srv); runs whenever the freeze hook ran")
	shutdownHook := fs.String("shutdown-hook", "", "command that shuts the protected machine down when a planned failover asks (exit 0: it is down)")
	libvirtDomain := fs.String("libvirt-domain", "", "the protected machine is this libvirt domain: its hardware is read from libvirt and sent to the process server, app-consistent points freeze it through its QEMU guest agent and a planned failover shuts it down (unless hooks are given); with --nbd-listen unix:PATH the socket is made for QEMU's user")
	libvirtURI := fs.String("libvirt-uri", "qemu:///system", "libvirt of --libvirt-domain")
	machineFile := fs.String("machine", "", "JSON file describing the machine for failover checks (fields of ferry.v1.MachineInfo, e.g. {\"os\":\"linux\",\"dhcp\":true})")
	tlsDir := fs.String("tls-dir", "", "the agent's TLS identity (cert.pem, key.pem, ca.crt; default STATE/tls once enrolled)")
	tokenFile := fs.String("token-file", "", "file holding a single-use enrollment token from 'ferry-ps enroll' ('-': standard input; or set FERRY_ENROLL_TOKEN): gets the agent's certificate into --tls-dir first. Not a flag value: command lines are visible to every user in ps")
	insecureOK := fs.Bool("insecure", false, "talk to the process server in plain text without authentication (tests and isolated labs only)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: ferry-agent run --ps ADDR --vm NAME --disk NAME=PATH [--disk ...] --state DIR [flags]

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
for a point that is exactly one moment of a disk being written.

SIGTERM or SIGINT waits up to 10s for acknowledgements, then saves what is
unsent so that the next run continues without a full resync.

Flags:
`)
		fs.PrintDefaults()
	}
	fs.Parse(os.Args[2:])
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "crash-interval" || f.Name == "app-interval" {
			// Frequencies given here win over the process server's policy.
			cfg.IgnorePolicy = true
		}
	})
	cfg.Mode = agent.ModeScan
	if *nbdListen != "" {
		cfg.Mode = agent.ModeSplitter
	}
	log, err := cli.Logger(*level)
	if err != nil {
		cli.Fatal("ferry-agent", err)
	}
	cfg.Logger = log
	for _, d := range disks {
		name, path, ok := strings.Cut(d, "=")
		if !ok || name == "" || path == "" {
			cli.Fatal("ferry-agent", fmt.Errorf("disk %q: want NAME=PATH", d))
		}
		dev, err := blockdev.OpenFile(path, *nbdListen == "")
		if err != nil {
			cli.Fatal("ferry-agent", err)
		}
		defer dev.Close()
		cfg.Disks = append(cfg.Disks, agent.Disk{Name: name, Device: dev})
	}
	// Scanning its own disks, the agent runs on the machine it protects;
	// serving them over NBD it runs beside it and does not know its OS.
	cfg.Machine = &ferryv1.MachineInfo{}
	if *nbdListen == "" {
		cfg.Machine.Os = runtime.GOOS
	}
	var domain *agent.LibvirtDomain
	if *libvirtDomain != "" {
		if *machineFile != "" {
			cli.Fatal("ferry-agent", fmt.Errorf("--machine and --libvirt-domain both describe the machine: give one"))
		}
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := virt.Dial(dctx, *libvirtURI)
		cancel()
		if err != nil {
			cli.Fatal("ferry-agent", err)
		}
		defer conn.Close()
		domain = &agent.LibvirtDomain{Conn: conn, Name: *libvirtDomain, ShutdownTimeout: time.Minute}
		paths := map[string]string{}
		for _, d := range disks {
			name, path, _ := strings.Cut(d, "=")
			paths[name] = path
		}
		if cfg.Machine, err = domain.Describe(paths, *nbdListen != ""); err != nil {
			cli.Fatal("ferry-agent", err)
		}
		log.Info("machine read from libvirt", "domain", *libvirtDomain, "os", cfg.Machine.GetOs(),
			"vcpus", cfg.Machine.GetHardware().GetVcpus(), "memory_mib", cfg.Machine.GetHardware().GetMemoryMib(),
			"guest_agent", cfg.Machine.GetHardware().GetGuestAgent())
	}
	if *machineFile != "" {
		raw, err := os.ReadFile(*machineFile)
		if err == nil {
			err = protojson.Unmarshal(raw, cfg.Machine)
		}
		if err != nil {
			cli.Fatal("ferry-agent", fmt.Errorf("machine: %w", err))
		}
	}
	hook := func(cmd string) func(context.Context) error {
		if cmd == "" {
			return nil
		}
		return func(ctx context.Context) error { return runHook(ctx, cmd) }
	}
	cfg.Freeze, cfg.Thaw = hook(*freezeHook), hook(*thawHook)
	if domain != nil && *freezeHook == "" && cfg.Machine.GetHardware().GetGuestAgent() {
		cfg.Freeze, cfg.Thaw = domain.Freeze, domain.Thaw
	}
	if domain != nil && *shutdownHook == "" {
		cfg.ShutdownMachine = domain.Shutdown
	}
	if *shutdownHook != "" {
		hook := *shutdownHook
		cfg.ShutdownMachine = func(ctx context.Context) error { return runHook(ctx, hook) }
	}
	if *tlsDir == "" && !*insecureOK {
		*tlsDir = filepath.Join(cfg.StateDir, "tls")
	}
	token, err := readToken(*tokenFile)
	if err != nil {
		cli.Fatal("ferry-agent", err)
	}
	if token != "" && !tlsca.HasIdentity(*tlsDir) {
		// The process server may not be up yet: keep trying while it is
		// unreachable; a refused token is final.
		var vm string
		for backoff := time.Second; ; backoff = min(2*backoff, 30*time.Second) {
			ectx, cancel := context.WithTimeout(context.Background(), time.Minute)
			vm, err = tlsca.Enroll(ectx, cfg.Target, token, *tlsDir)
			cancel()
			if c := status.Code(err); err == nil || (c != codes.Unavailable && c != codes.DeadlineExceeded) {
				break
			}
			log.Warn("enroll: process server unreachable; trying again", "err", err, "in", backoff)
			time.Sleep(backoff)
		}
		if err != nil {
			cli.Fatal("ferry-agent", fmt.Errorf("enroll: %w", err))
		}
		if vm != cfg.VM {
			cli.Fatal("ferry-agent", fmt.Errorf("enroll: the token was for vm %s, not %s", vm, cfg.VM))
		}
		log.Info("enrolled: certificate stored", "dir", *tlsDir, "vm", vm)
	}
	if *insecureOK {
		*tlsDir = ""
	} else if !tlsca.HasIdentity(*tlsDir) {
		cli.Fatal("ferry-agent", fmt.Errorf("no certificate in %s: enroll with --token-file or FERRY_ENROLL_TOKEN (ferry-ps enroll --vm %s) or pass --insecure for plain text", *tlsDir, cfg.VM))
	}
	creds, err := tlsca.DialOption(*tlsDir, *insecureOK, log)
	if err != nil {
		cli.Fatal("ferry-agent", err)
	}
	cfg.DialOptions = []grpc.DialOption{creds}
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	if *tlsDir != "" {
		dir := *tlsDir
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_agent_certificate_expiry_seconds",
			Help: "Seconds until the agent's certificate expires (it renews itself when a third of its lifetime is left)."},
			func() float64 {
				_, na, err := tlsca.Expiry(dir)
				if err != nil {
					return 0
				}
				return time.Until(na).Seconds()
			}))
	}
	a, err := agent.New(cfg)
	if err != nil {
		cli.Fatal("ferry-agent", err)
	}
	if *metrics != "" {
		l, err := net.Listen("tcp", *metrics)
		if err != nil {
			cli.Fatal("ferry-agent", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		go http.Serve(l, mux)
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	if err := a.Open(ctx); err != nil {
		cli.Fatal("ferry-agent", err)
	}
	if *tlsDir != "" {
		go renewLoop(ctx, log, cfg.Target, *tlsDir, creds)
	}
	var nbdSrv *nbd.Server
	if *nbdListen != "" {
		access, err := frontEndAccess(*nbdListen, *nbdTLS, *nbdInsecure, cfg.VM)
		if err != nil {
			cli.Fatal("ferry-agent", err)
		}
		l, err := nbd.Listen(*nbdListen)
		if err != nil {
			cli.Fatal("ferry-agent", err)
		}
		if sock, ok := strings.CutPrefix(*nbdListen, "unix:"); ok && domain != nil {
			uid, err := domain.OwnSocket(sock)
			if err != nil {
				cli.Fatal("ferry-agent", err)
			}
			access.UIDs = append(access.UIDs, uid)
		}
		nbdSrv = nbd.NewServer(log, access)
		for _, e := range a.NBDExports() {
			nbdSrv.Add(e)
		}
		go nbdSrv.Serve(l)
		log.Info("disks served over NBD", "listen", l.Addr().String())
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
	if err := errors.Join(a.Err(), cerr); err != nil {
		cli.Fatal("ferry-agent", err)
	}
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
				conn, err := grpc.NewClient(target, creds)
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
