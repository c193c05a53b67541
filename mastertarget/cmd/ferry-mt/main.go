// Command ferry-mt runs Ferry's master target at the primary site: it
// receives reverse replication from recovered VMs and fails them back.
package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/mastertarget"
	"github.com/ferrydr/ferry/pkg/cli"
	"github.com/ferrydr/ferry/pkg/ingest"
	"github.com/ferrydr/ferry/pkg/retention"
	"github.com/ferrydr/ferry/pkg/tlsca"
	"github.com/ferrydr/ferry/pkg/virt"
)

func main() {
	root := cli.Root("ferry-mt", "Ferry's master target at the primary site", `
ferry-mt runs Ferry's master target at the primary site: it receives reverse
replication from recovered VMs and fails them back.

Exit codes: 0 done, 1 failed, 2 wrong command line or configuration.`)
	root.AddCommand(serveCmd())
	cli.Execute(root)
}

// settings are ferry-mt serve's configuration file and environment.
var settings = cli.Settings{ConfigFlag: "config", EnvPrefix: "FERRY_MT"}

// serveCmd is ferry-mt serve.
func serveCmd() *cobra.Command {
	fb := retention.Failback()
	c := &cobra.Command{
		Use:   "serve [flags]",
		Short: "receive reverse replication and fail VMs back",
		Long: fmt.Sprintf(`Receives reverse replication after a reprotect. At the original location it
writes onto the primary machine's own disks (--disk) and only what differs is
sent; at an alternate location onto new disks. It applies the failback
policy, which nobody edits: the recovered VM's agent cuts crash-consistent
points every %v and app-consistent ones every %v, points older than %v
are deleted (their data folded into the target disks), and a VM whose newest
point is older than %v raises an rpo-exceeded event (ferryctl events).

Every flag is also a setting of the --config file (YAML; the same names)
and of the environment (FERRY_MT_LISTEN, ...): a flag wins over the
environment, the environment over the file.`, fb.CrashInterval, fb.AppInterval, fb.Retention, fb.RPOThreshold),
		Args: cli.NoArgs,
	}
	fs := c.Flags()
	fs.SortFlags = false
	fs.String("config", "", "YAML file of settings (e.g. /etc/ferry/mt.yaml)")
	cfg := mastertarget.Config{}
	prim := &mastertarget.FilePrimary{Disks: map[string]string{}}
	var disks cli.Repeated
	fs.StringVar(&cfg.DataDir, "data", "ferry-mt-data", "directory of the journal (created if missing)")
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:7500", "gRPC address for agents on recovered VMs and for ferry-ps")
	fs.Int64Var(&cfg.MaxDiskBytes, "max-disk-size", ingest.DefaultMaxDiskBytes, "largest disk (bytes) reverse replication may declare; larger ones are refused")
	fs.StringVar(&cfg.MetricsListen, "metrics", "127.0.0.1:7501", "admin address for /metrics (empty: off)")
	fs.Var(&disks, "disk", "an original disk as VM:DISK=PATH (image or block device of the primary machine); repeat")
	fs.StringVar(&prim.AlternateDir, "alternate-dir", "ferry-mt-data/alternate", "where disks for alternate location recovery are created")
	fs.StringVar(&prim.StartHook, "start-hook", "", "command run as HOOK VM LOCATION DISK=PATH... to start the primary VM after failback")
	var domains cli.Repeated
	fs.Var(&domains, "libvirt-domain", "the primary machine of VM is this libvirt domain, as VM=DOMAIN; repeat: it is kept shut down during reprotect, started after an original-location failback, and copied onto the new disks after an alternate-location one (instead of --start-hook)")
	libvirtURI := fs.String("libvirt-uri", "qemu:///system", "the primary site's libvirt, for --libvirt-domain")
	tlsDir := fs.String("tls-dir", "", "the master target's TLS identity ('ferry-ps ca issue --role mt'): TLS 1.3 with client certificates")
	revocations := fs.String("revocations", "", "the CA's revocation list (a copy of ferry-ps's CA/revoked.json, kept current): revoked certificates are refused at every handshake")
	insecureOK := fs.Bool("insecure", false, "serve in plain text without authentication (tests and isolated labs only)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json (one object per line)")
	c.RunE = func(c *cobra.Command, _ []string) error {
		if _, err := settings.Apply(c.Flags()); err != nil {
			return err
		}
		return serve(cfg, prim, disks, domains, *libvirtURI, *tlsDir, *revocations, *insecureOK, *level, *logFormat)
	}
	return c
}

// serve runs the master target until SIGTERM or SIGINT.
func serve(cfg mastertarget.Config, prim *mastertarget.FilePrimary, disks, domains cli.Repeated, libvirtURI, tlsDir, revocations string, insecureOK bool, level, logFormat string) error {
	for _, d := range disks {
		k, path, ok := strings.Cut(d, "=")
		if !ok || !strings.Contains(k, ":") {
			return cli.Usagef("disk %q: want VM:DISK=PATH", d)
		}
		prim.Disks[k] = path
	}
	cfg.Primary = prim
	log, err := cli.Logger(level, logFormat)
	if err != nil {
		return err
	}
	if len(domains) > 0 {
		if prim.StartHook != "" {
			return cli.Usagef("--libvirt-domain and --start-hook both start primaries: give one")
		}
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := virt.Dial(dctx, libvirtURI)
		cancel()
		if err != nil {
			return err
		}
		defer conn.Close()
		lp := &mastertarget.LibvirtPrimary{FilePrimary: prim, Conn: conn, Domains: map[string]string{}}
		for _, d := range domains {
			vm, dom, ok := strings.Cut(d, "=")
			if !ok || vm == "" || dom == "" {
				return cli.Usagef("libvirt-domain %q: want VM=DOMAIN", d)
			}
			lp.Domains[vm] = dom
		}
		cfg.Primary = lp
	}
	cfg.Logger = log
	switch {
	case tlsDir != "":
		if cfg.TLS, err = tlsca.Config(tlsDir, false); err == nil && revocations != "" {
			cfg.TLS = tlsca.WithRevocations(cfg.TLS, revocations)
		}
		if err != nil {
			return err
		}
	case insecureOK:
		log.Warn("--insecure: serving in plain text without authentication")
	default:
		return cli.Usagef("no TLS: pass --tls-dir (ferry-ps ca issue --role mt) or --insecure for plain text")
	}
	srv, err := mastertarget.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	if err := srv.Open(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return srv.Close(cctx)
}
