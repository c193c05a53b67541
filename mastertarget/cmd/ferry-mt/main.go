// Command ferry-mt runs Ferry's master target at the primary site: it
// receives reverse replication from recovered VMs and fails them back.
package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

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
	serve, _ := serveCmd()
	root.AddCommand(serve, configCmd())
	cli.Execute(root)
}

// configCmd is ferry-mt config check.
func configCmd() *cobra.Command {
	return settings.CheckCommand("/etc/ferry/mt.yaml", "checks the disks' and domains' forms and loads the TLS identity", func() (*pflag.FlagSet, func() error) {
		sc, o := serveCmd()
		return sc.Flags(), func() error { return prepare(o) }
	})
}

// settings are ferry-mt serve's configuration file and environment.
var settings = cli.Settings{ConfigFlag: "config", EnvPrefix: "FERRY_MT"}

// serveCmd is ferry-mt serve, with its flags bound to new options.
func serveCmd() (*cobra.Command, *options) {
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
	o := &options{prim: &mastertarget.FilePrimary{Disks: map[string]string{}}}
	fs := c.Flags()
	fs.SortFlags = false
	fs.StringVar(&o.config, "config", "", "YAML file of settings (e.g. /etc/ferry/mt.yaml)")
	fs.StringVar(&o.cfg.DataDir, "data", "ferry-mt-data", "directory of the journal (created if missing)")
	fs.StringVar(&o.cfg.Listen, "listen", "127.0.0.1:7500", "gRPC address for agents on recovered VMs and for ferry-ps")
	fs.Int64Var(&o.cfg.MaxDiskBytes, "max-disk-size", ingest.DefaultMaxDiskBytes, "largest disk (bytes) reverse replication may declare; larger ones are refused")
	fs.StringVar(&o.cfg.MetricsListen, "metrics", "127.0.0.1:7501", "admin address for /metrics (empty: off)")
	fs.Var(&o.disks, "disk", "an original disk as VM:DISK=PATH (image or block device of the primary machine); repeat")
	fs.StringVar(&o.prim.AlternateDir, "alternate-dir", "ferry-mt-data/alternate", "where disks for alternate location recovery are created")
	fs.StringVar(&o.prim.StartHook, "start-hook", "", "command run as HOOK VM LOCATION DISK=PATH... to start the primary VM after failback")
	fs.Var(&o.domains, "libvirt-domain", "the primary machine of VM is this libvirt domain, as VM=DOMAIN; repeat: it is kept shut down during reprotect, started after an original-location failback, and copied onto the new disks after an alternate-location one (instead of --start-hook)")
	fs.StringVar(&o.libvirtURI, "libvirt-uri", "qemu:///system", "the primary site's libvirt, for --libvirt-domain")
	fs.StringVar(&o.tlsDir, "tls-dir", "", "the master target's TLS identity ('ferry-ps ca issue --role mt'): TLS 1.3 with client certificates")
	fs.StringVar(&o.revocations, "revocations", "", "the CA's revocation list (a copy of ferry-ps's CA/revoked.json, kept current): revoked certificates are refused at every handshake")
	fs.BoolVar(&o.insecureOK, "insecure", false, "serve in plain text without authentication (tests and isolated labs only)")
	fs.StringVar(&o.level, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "text or json (one object per line)")
	c.RunE = func(c *cobra.Command, _ []string) error {
		if _, err := settings.Apply(c.Flags()); err != nil {
			return err
		}
		return serve(o)
	}
	return c, o
}

// options are ferry-mt serve's flags, with the master target's
// configuration.
type options struct {
	cfg                                     mastertarget.Config
	prim                                    *mastertarget.FilePrimary
	disks, domains                          cli.Repeated
	config, libvirtURI, tlsDir, revocations string
	insecureOK                              bool
	level, logFormat                        string
	// domainOf is --libvirt-domain as VM -> domain, once prepared.
	domainOf map[string]string
}

// prepare checks the settings and builds the configuration without
// starting anything (libvirt is dialled by serve).
func prepare(o *options) error {
	for _, d := range o.disks {
		k, path, ok := strings.Cut(d, "=")
		if !ok || !strings.Contains(k, ":") {
			return cli.Usagef("disk %q: want VM:DISK=PATH", d)
		}
		o.prim.Disks[k] = path
	}
	o.cfg.Primary = o.prim
	log, err := cli.Logger(o.level, o.logFormat)
	if err != nil {
		return err
	}
	o.cfg.Logger = log
	if len(o.domains) > 0 && o.prim.StartHook != "" {
		return cli.Usagef("--libvirt-domain and --start-hook both start primaries: give one")
	}
	o.domainOf = map[string]string{}
	for _, d := range o.domains {
		vm, dom, ok := strings.Cut(d, "=")
		if !ok || vm == "" || dom == "" {
			return cli.Usagef("libvirt-domain %q: want VM=DOMAIN", d)
		}
		o.domainOf[vm] = dom
	}
	switch {
	case o.tlsDir != "":
		if o.cfg.TLS, err = tlsca.Config(o.tlsDir, false); err == nil && o.revocations != "" {
			o.cfg.TLS = tlsca.WithRevocations(o.cfg.TLS, o.revocations)
		}
		if err != nil {
			return &cli.UsageError{Err: fmt.Errorf("tls-dir: %w", err)}
		}
	case o.insecureOK:
	default:
		return cli.Usagef("no TLS: pass --tls-dir (ferry-ps ca issue --role mt) or --insecure for plain text")
	}
	return nil
}

// serve runs the master target until SIGTERM or SIGINT.
func serve(o *options) error {
	if err := prepare(o); err != nil {
		return err
	}
	cfg, log := o.cfg, o.cfg.Logger
	if o.insecureOK {
		log.Warn("--insecure: serving in plain text without authentication")
	}
	if len(o.domainOf) > 0 {
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := virt.Dial(dctx, o.libvirtURI)
		cancel()
		if err != nil {
			return err
		}
		defer conn.Close()
		cfg.Primary = &mastertarget.LibvirtPrimary{FilePrimary: o.prim, Conn: conn, Domains: o.domainOf}
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
