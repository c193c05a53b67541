package processserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/nbd"
	"github.com/ferrydr/ferry/pkg/virt"
)

// LibvirtConfig configures the libvirt compute driver.
type LibvirtConfig struct {
	// URI of the libvirt daemon at the recovery site (qemu:///system).
	URI string
	// Dir holds each recovered domain's NBD socket and serial console log.
	// QEMU's user must be able to reach it: ferry-ps makes it 0711.
	Dir string
	// DomainType is "kvm" or "qemu"; empty: kvm when /dev/kvm runs guests
	// here, else qemu (TCG).
	DomainType string
	// Network is the recovery network of planned and unplanned failovers
	// when the operator names none.
	Network string
	// Prefix is put before every domain name Ferry creates (so that
	// recovered domains do not collide with primaries on a shared host).
	Prefix string
	// ShutdownTimeout is how long a graceful (ACPI) shutdown may take
	// before the domain is destroyed (default 60s).
	ShutdownTimeout time.Duration
	Logger          *slog.Logger
}

// LibvirtCompute creates, runs and deletes recovered machines as libvirt
// domains. A test failover's disks are the point's copy-on-write overlays,
// served to QEMU over NBD on a Unix socket only QEMU's user can open
// (nothing is copied); a planned or unplanned failover's disks are image
// files on the recovery host's storage.
type LibvirtCompute struct {
	cfg        LibvirtConfig
	conn       *virt.Conn
	typ        string
	typReason  string
	uid, gid   int
	log        *slog.Logger
	mu         sync.Mutex
	nbdServers map[string]*nbd.Server // per domain
}

// NewLibvirtCompute connects to libvirt and prepares the driver's
// directory.
func NewLibvirtCompute(ctx context.Context, cfg LibvirtConfig) (*LibvirtCompute, error) {
	if cfg.URI == "" {
		cfg.URI = "qemu:///system"
	}
	if cfg.Dir == "" {
		return nil, errors.New("libvirt compute: a directory for sockets and console logs is required")
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &LibvirtCompute{cfg: cfg, log: cfg.Logger.With("component", "libvirt"), nbdServers: map[string]*nbd.Server{}}
	switch cfg.DomainType {
	case "":
		c.typ, c.typReason = virt.DomainType()
	case "kvm", "qemu":
		c.typ, c.typReason = cfg.DomainType, "chosen by the operator"
	default:
		return nil, fmt.Errorf("libvirt domain type %q: want kvm or qemu", cfg.DomainType)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := virt.Dial(dctx, cfg.URI)
	if err != nil {
		return nil, err
	}
	c.conn = conn
	if c.uid, c.gid, err = conn.QEMUUser(c.typ); err != nil {
		conn.Close()
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o711); err != nil {
		conn.Close()
		return nil, err
	}
	if err := reachable(cfg.Dir, c.uid, c.gid); err != nil {
		conn.Close()
		return nil, err
	}
	c.log.Info("libvirt compute", "uri", cfg.URI, "type", c.typ, "why", c.typReason, "qemu_uid", c.uid)
	return c, nil
}

// Close disconnects from libvirt and stops serving disks; domains keep
// running (their disks are gone, so the caller deletes them first).
func (c *LibvirtCompute) Close() error {
	c.mu.Lock()
	for name, srv := range c.nbdServers {
		srv.Close()
		delete(c.nbdServers, name)
	}
	c.mu.Unlock()
	return c.conn.Close()
}

// DomainType is the domain type the driver uses, and why.
func (c *LibvirtCompute) DomainType() (string, string) { return c.typ, c.typReason }

func (c *LibvirtCompute) AcceptsDevices() bool { return true }

func (c *LibvirtCompute) domainDir(name string) string { return filepath.Join(c.cfg.Dir, name) }

// Find implements InstanceFinder: the domain Create makes for a name.
func (c *LibvirtCompute) Find(ctx context.Context, name string) (string, bool, error) {
	ok, err := c.conn.Exists(c.cfg.Prefix + name)
	return c.cfg.Prefix + name, ok, err
}

// Create defines the domain from the machine's recorded hardware.
func (c *LibvirtCompute) Create(ctx context.Context, spec VMSpec) (inst Instance, err error) {
	name := c.cfg.Prefix + spec.Name
	if ok, err := c.conn.Exists(name); err != nil {
		return inst, err
	} else if ok {
		return inst, fmt.Errorf("%w: %s: delete or rename it, or set another domain prefix", virt.ErrDomainExists, name)
	}
	inst = Instance{ID: name}
	netName := spec.Network
	switch {
	case spec.Test && netName == "test-"+strings.TrimSuffix(spec.Name, "-test") && !c.networkExists(netName):
		// No test network named (the process server's default name, and
		// no libvirt network has it): the test machine gets no NIC at all.
		netName = ""
		inst.Isolated = true
	case netName == "" && !spec.Test:
		netName = c.cfg.Network
		if netName == "" {
			return inst, errors.New("no recovery network: name one with --network, or start ferry-ps with --libvirt-network")
		}
	}
	if netName != "" {
		n, err := c.conn.Network(netName)
		if err != nil {
			return inst, err
		}
		if !n.Active {
			if err := c.conn.StartNetwork(netName); err != nil {
				return inst, fmt.Errorf("start network %s: %w", netName, err)
			}
		}
		inst.Network, inst.Isolated = netName, n.Isolated
		if spec.Test && !n.Isolated {
			return inst, fmt.Errorf("network %q forwards to other networks: a test failover needs an isolated network (no <forward>)", netName)
		}
	}
	dir := c.domainDir(name)
	if err := os.RemoveAll(dir); err != nil {
		return inst, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return inst, err
	}
	if err := os.Chown(dir, c.uid, c.gid); err != nil {
		return inst, err
	}
	defer func() {
		if err != nil {
			c.stopDisks(name)
			os.RemoveAll(dir)
		}
	}()
	ds := DomainSpecFor(name, c.typ, spec.Machine, netName, filepath.Join(dir, "console.log"))
	if spec.Test {
		// The primary keeps running with its MAC: a test machine gets its
		// own, or leases and probes would reach the primary.
		nics := make([]virt.NIC, len(ds.Hardware.NICs))
		for i, n := range ds.Hardware.NICs {
			n.MAC = ""
			nics[i] = n
		}
		ds.Hardware.NICs = nics
	}
	var exports []nbd.Export
	for _, d := range spec.Disks {
		if !spec.Test && d.Path != "" && !strings.Contains(d.Path, "://") {
			if err := reachable(filepath.Dir(d.Path), c.uid, c.gid); err != nil {
				return inst, err
			}
			ds.Disks = append(ds.Disks, virt.DiskSource{Name: d.Name, File: d.Path})
			continue
		}
		if d.Device == nil {
			return inst, fmt.Errorf("disk %s has neither a device nor an image", d.Name)
		}
		exports = append(exports, nbd.Export{Name: d.Name, Device: d.Device, BlockSize: blockdev.BlockSize})
		ds.Disks = append(ds.Disks, virt.DiskSource{Name: d.Name, NBDSocket: filepath.Join(dir, "nbd.sock"), NBDExport: d.Name})
	}
	if len(exports) > 0 {
		if err := c.serveDisks(name, filepath.Join(dir, "nbd.sock"), exports); err != nil {
			return inst, err
		}
	}
	if err := c.conn.Define(ds); err != nil {
		return inst, err
	}
	return inst, nil
}

func (c *LibvirtCompute) networkExists(name string) bool {
	_, err := c.conn.Network(name)
	return err == nil
}

// DomainSpecFor is the domain a recovered machine gets: its recorded
// hardware (one virtio disk and NIC each when none was recorded).
func DomainSpecFor(name, typ string, m Machine, network, consoleLog string) virt.DomainSpec {
	ds := virt.DomainSpec{Name: name, Type: typ, Network: network, ConsoleLog: consoleLog}
	if m.Hardware != nil {
		ds.Hardware = *m.Hardware
	}
	return ds
}

// serveDisks serves a domain's disks on its own Unix socket that only
// QEMU's user (and root) can open.
func (c *LibvirtCompute) serveDisks(name, sock string, exports []nbd.Export) error {
	os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("nbd socket for %s: %w", name, err)
	}
	if err := os.Chmod(sock, 0o600); err == nil {
		err = os.Chown(sock, c.uid, c.gid)
	}
	if err != nil {
		l.Close()
		return fmt.Errorf("nbd socket for %s: %w", name, err)
	}
	srv := nbd.NewServer(c.log, nbd.Access{UIDs: []int{c.uid}})
	for _, e := range exports {
		srv.Add(e)
	}
	c.mu.Lock()
	if old := c.nbdServers[name]; old != nil {
		old.Close()
	}
	c.nbdServers[name] = srv
	c.mu.Unlock()
	go srv.Serve(l)
	return nil
}

func (c *LibvirtCompute) stopDisks(name string) {
	c.mu.Lock()
	srv := c.nbdServers[name]
	delete(c.nbdServers, name)
	c.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// Serving lists the domains whose disks the driver serves over NBD.
func (c *LibvirtCompute) Serving() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for name := range c.nbdServers {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func (c *LibvirtCompute) Start(ctx context.Context, id string) error { return c.conn.Start(id) }

// Stop shuts the domain down gracefully (ACPI), destroying it after the
// shutdown timeout.
func (c *LibvirtCompute) Stop(ctx context.Context, id string) error {
	_, err := c.conn.Shutdown(ctx, id, c.cfg.ShutdownTimeout)
	if errors.Is(err, virt.ErrNoDomain) {
		return nil
	}
	return err
}

// Delete removes the domain, its disk exports and its directory.
func (c *LibvirtCompute) Delete(ctx context.Context, id string) error {
	err := c.conn.Undefine(id)
	c.stopDisks(id)
	return errors.Join(err, os.RemoveAll(c.domainDir(id)))
}

// consoleTail is how much of the serial log a job shows.
const consoleTail = 8 << 10

// Console returns the tail of the domain's serial console log.
func (c *LibvirtCompute) Console(ctx context.Context, id string) (string, error) {
	f, err := os.Open(filepath.Join(c.domainDir(id), "console.log"))
	if err != nil {
		return "", err
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > consoleTail {
		f.Seek(st.Size()-consoleTail, io.SeekStart)
	}
	b, err := io.ReadAll(f)
	if i := bytes.IndexByte(b, '\n'); i >= 0 && len(b) == consoleTail {
		b = b[i+1:] // start at a whole line
	}
	return strings.ToValidUTF8(string(b), "?"), err
}

// State reports running, shut off, crashed, paused or shutting down.
func (c *LibvirtCompute) State(ctx context.Context, id string) (string, error) {
	st, err := c.conn.State(id)
	return string(st), err
}

// Address is the domain's address from its network's DHCP leases.
func (c *LibvirtCompute) Address(ctx context.Context, id string) (string, error) {
	return c.conn.Address(id)
}

// reachable checks that uid/gid can traverse every directory down to dir.
func reachable(dir string, uid, gid int) error {
	if uid == 0 {
		return nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for p := abs; ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if !canTraverse(st, uid, gid) {
			return fmt.Errorf("QEMU runs as uid %d and cannot reach %s: %s is mode %v; make it traversable (chmod o+x) or put Ferry's directories where QEMU can reach them", uid, dir, p, st.Mode().Perm())
		}
		if p == "/" {
			return nil
		}
	}
}
