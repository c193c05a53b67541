package virt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"
)

// Errors.
var (
	// ErrUnreachable: libvirt could not be reached at the URI.
	ErrUnreachable = errors.New("libvirt unreachable")
	// ErrNoDomain: no domain has that name.
	ErrNoDomain = errors.New("no such domain")
	// ErrDomainExists: a domain already has the name a new one would take.
	ErrDomainExists = errors.New("domain name already taken")
	// ErrNoNetwork: no libvirt network has that name.
	ErrNoNetwork = errors.New("no such network")
)

// State is a domain's state as a compute driver reports it.
type State string

// States.
const (
	Running  State = "running"
	ShutOff  State = "shut off"
	Crashed  State = "crashed"
	Paused   State = "paused"
	Stopping State = "shutting down"
	Other    State = "other"
)

// Conn is a connection to one libvirt daemon. Its methods are safe for
// concurrent use.
type Conn struct {
	URI string
	l   *libvirt.Libvirt
}

// Dial connects to libvirt at uri (qemu:///system, qemu+unix:///system?socket=PATH,
// qemu+tcp://host/system, qemu+tls://...).
func Dial(ctx context.Context, uri string) (*Conn, error) {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme == "" {
		return nil, fmt.Errorf("libvirt URI %q: want e.g. qemu:///system", uri)
	}
	type result struct {
		l   *libvirt.Libvirt
		err error
	}
	ch := make(chan result, 1)
	go func() {
		l, err := libvirt.ConnectToURI(u)
		ch <- result{l, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("%w: %s: %v (is libvirtd running, and may this user use it?)", ErrUnreachable, uri, r.err)
		}
		return &Conn{URI: uri, l: r.l}, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.l != nil {
				r.l.Disconnect()
			}
		}()
		return nil, fmt.Errorf("%w: %s: %v", ErrUnreachable, uri, ctx.Err())
	}
}

// Close disconnects.
func (c *Conn) Close() error { return c.l.Disconnect() }

func (c *Conn) domain(name string) (libvirt.Domain, error) {
	d, err := c.l.DomainLookupByName(name)
	if libvirt.IsNotFound(err) {
		return d, fmt.Errorf("%w: %s", ErrNoDomain, name)
	}
	return d, err
}

// Exists tells whether a domain of that name is defined or running.
func (c *Conn) Exists(name string) (bool, error) {
	_, err := c.domain(name)
	if errors.Is(err, ErrNoDomain) {
		return false, nil
	}
	return err == nil, err
}

// DomainXML returns a domain's live XML (its inactive XML when inactive is
// set).
func (c *Conn) DomainXML(name string, inactive bool) (string, error) {
	d, err := c.domain(name)
	if err != nil {
		return "", err
	}
	var flags libvirt.DomainXMLFlags
	if inactive {
		flags = libvirt.DomainXMLInactive
	}
	return c.l.DomainGetXMLDesc(d, flags)
}

// Define defines a new persistent domain; it refuses a name already taken
// (libvirt would redefine that domain).
func (c *Conn) Define(spec DomainSpec) error {
	if err := spec.Check(); err != nil {
		return err
	}
	if ok, err := c.Exists(spec.Name); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("%w: %s: delete or rename it, or fail over under another name", ErrDomainExists, spec.Name)
	}
	x, err := spec.XML()
	if err != nil {
		return err
	}
	if _, err := c.l.DomainDefineXML(x); err != nil {
		return fmt.Errorf("define domain %s: %w", spec.Name, err)
	}
	return nil
}

// Start boots a defined domain.
func (c *Conn) Start(name string) error {
	d, err := c.domain(name)
	if err != nil {
		return err
	}
	if err := c.l.DomainCreate(d); err != nil {
		return fmt.Errorf("start domain %s: %w", name, err)
	}
	return nil
}

// State reports a domain's state.
func (c *Conn) State(name string) (State, error) {
	d, err := c.domain(name)
	if err != nil {
		return "", err
	}
	st, _, err := c.l.DomainGetState(d, 0)
	if err != nil {
		return "", err
	}
	switch libvirt.DomainState(st) {
	case libvirt.DomainRunning, libvirt.DomainBlocked:
		return Running, nil
	case libvirt.DomainShutoff:
		return ShutOff, nil
	case libvirt.DomainCrashed:
		return Crashed, nil
	case libvirt.DomainPaused, libvirt.DomainPmsuspended:
		return Paused, nil
	case libvirt.DomainShutdown:
		return Stopping, nil
	}
	return Other, nil
}

// shutdownRepress is how often Shutdown presses the power button again.
const shutdownRepress = 3 * time.Second

// Shutdown asks the guest to power off (ACPI) and waits up to timeout for
// it; then it destroys the domain. It reports whether the guest shut down
// by itself. A domain already shut off is left alone.
func (c *Conn) Shutdown(ctx context.Context, name string, timeout time.Duration) (graceful bool, err error) {
	d, err := c.domain(name)
	if err != nil {
		return false, err
	}
	if st, err := c.State(name); err != nil || st == ShutOff {
		return st == ShutOff, err
	}
	if err := c.l.DomainShutdownFlags(d, libvirt.DomainShutdownAcpiPowerBtn); err != nil {
		return false, c.destroy(d, name, err)
	}
	deadline := time.Now().Add(timeout)
	press := time.Now()
	for time.Now().Before(deadline) {
		st, err := c.State(name)
		if err != nil {
			return false, err
		}
		if st == ShutOff {
			return true, nil
		}
		if time.Since(press) > shutdownRepress {
			// A guest still booting ignores the button: press it again.
			c.l.DomainShutdownFlags(d, libvirt.DomainShutdownAcpiPowerBtn)
			press = time.Now()
		}
		select {
		case <-ctx.Done():
			return false, c.destroy(d, name, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	return false, c.destroy(d, name, nil)
}

func (c *Conn) destroy(d libvirt.Domain, name string, cause error) error {
	if st, err := c.State(name); err == nil && st == ShutOff {
		return nil
	}
	if err := c.l.DomainDestroy(d); err != nil {
		if st, serr := c.State(name); serr == nil && st == ShutOff {
			return nil
		}
		return fmt.Errorf("destroy domain %s: %w", name, errors.Join(err, cause))
	}
	return nil
}

// Destroy powers a domain off at once.
func (c *Conn) Destroy(name string) error {
	d, err := c.domain(name)
	if err != nil {
		return err
	}
	return c.destroy(d, name, nil)
}

// Undefine destroys a running domain and removes its definition; a domain
// that does not exist is not an error.
func (c *Conn) Undefine(name string) error {
	d, err := c.domain(name)
	if errors.Is(err, ErrNoDomain) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := c.destroy(d, name, nil); err != nil {
		return err
	}
	if err := c.l.DomainUndefineFlags(d, libvirt.DomainUndefineManagedSave|libvirt.DomainUndefineNvram); err != nil && !libvirt.IsNotFound(err) {
		return fmt.Errorf("undefine domain %s: %w", name, err)
	}
	return nil
}

// Freeze quiesces the guest's file systems through its guest agent and
// returns how many it froze.
func (c *Conn) Freeze(name string) (int, error) {
	d, err := c.domain(name)
	if err != nil {
		return 0, err
	}
	n, err := c.l.DomainFsfreeze(d, nil, 0)
	if err != nil {
		return 0, fmt.Errorf("freeze file systems of %s: %w", name, err)
	}
	return int(n), nil
}

// Thaw lets the guest's file systems go on.
func (c *Conn) Thaw(name string) (int, error) {
	d, err := c.domain(name)
	if err != nil {
		return 0, err
	}
	n, err := c.l.DomainFsthaw(d, nil, 0)
	if err != nil {
		return 0, fmt.Errorf("thaw file systems of %s: %w", name, err)
	}
	return int(n), nil
}

// Network is what the driver needs to know of a libvirt network.
type Network struct {
	Name     string
	Active   bool
	Isolated bool // no <forward>: guests reach only each other and the host
	Bridge   string
	Address  string // the host's address on it
}

// Network looks a network up.
func (c *Conn) Network(name string) (Network, error) {
	n, err := c.l.NetworkLookupByName(name)
	if isNoNetwork(err) {
		return Network{}, fmt.Errorf("%w: %s (virsh net-list --all lists the networks)", ErrNoNetwork, name)
	}
	if err != nil {
		return Network{}, err
	}
	x, err := c.l.NetworkGetXMLDesc(n, 0)
	if err != nil {
		return Network{}, err
	}
	var nx libvirtxml.Network
	if err := nx.Unmarshal(x); err != nil {
		return Network{}, fmt.Errorf("network %s: %w", name, err)
	}
	active, err := c.l.NetworkIsActive(n)
	if err != nil {
		return Network{}, err
	}
	out := Network{Name: name, Active: active == 1, Isolated: nx.Forward == nil}
	if nx.Bridge != nil {
		out.Bridge = nx.Bridge.Name
	}
	if len(nx.IPs) > 0 {
		out.Address = nx.IPs[0].Address
	}
	return out, nil
}

// StartNetwork starts a defined network that is not active.
func (c *Conn) StartNetwork(name string) error {
	n, err := c.l.NetworkLookupByName(name)
	if err != nil {
		return fmt.Errorf("%w: %s", ErrNoNetwork, name)
	}
	return c.l.NetworkCreate(n)
}

// DefineNetwork defines and starts a persistent network from its XML.
func (c *Conn) DefineNetwork(x string) error {
	n, err := c.l.NetworkDefineXML(x)
	if err != nil {
		return err
	}
	return c.l.NetworkCreate(n)
}

// RemoveNetwork stops and undefines a network; a missing one is no error.
func (c *Conn) RemoveNetwork(name string) error {
	n, err := c.l.NetworkLookupByName(name)
	if isNoNetwork(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if a, _ := c.l.NetworkIsActive(n); a == 1 {
		if err := c.l.NetworkDestroy(n); err != nil {
			return err
		}
	}
	return c.l.NetworkUndefine(n)
}

// Address returns the IPv4 address the domain's first NIC leased from its
// libvirt network's DHCP server, or "" when it has none yet.
func (c *Conn) Address(name string) (string, error) {
	x, err := c.DomainXML(name, false)
	if err != nil {
		return "", err
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(x); err != nil {
		return "", err
	}
	if d.Devices == nil || len(d.Devices.Interfaces) == 0 {
		return "", nil
	}
	nic := d.Devices.Interfaces[0]
	if nic.Source == nil || nic.Source.Network == nil || nic.MAC == nil {
		return "", nil
	}
	n, err := c.l.NetworkLookupByName(nic.Source.Network.Network)
	if err != nil {
		return "", err
	}
	leases, _, err := c.l.NetworkGetDhcpLeases(n, libvirt.OptString{nic.MAC.Address}, 1, 0)
	if err != nil {
		return "", err
	}
	var best libvirt.NetworkDhcpLease
	for _, l := range leases {
		if l.Type == 0 && l.Expirytime >= best.Expirytime { // IPv4
			best = l
		}
	}
	return best.Ipaddr, nil
}

func isNoNetwork(err error) bool {
	var e libvirt.Error
	return errors.As(err, &e) && e.Code == uint32(libvirt.ErrNoNetwork)
}

// QEMUUser is the uid and gid QEMU runs as for domains of type typ, from
// libvirt's DAC security model; files and sockets a guest opens must be
// reachable by them.
func (c *Conn) QEMUUser(typ string) (uid, gid int, err error) {
	x, err := c.l.ConnectGetCapabilities()
	if err != nil {
		return 0, 0, err
	}
	var caps struct {
		Host struct {
			SecModels []struct {
				Model      string `xml:"model"`
				BaseLabels []struct {
					Type  string `xml:"type,attr"`
					Label string `xml:",chardata"`
				} `xml:"baselabel"`
			} `xml:"secmodel"`
		} `xml:"host"`
	}
	if err := xml.Unmarshal([]byte(x), &caps); err != nil {
		return 0, 0, fmt.Errorf("libvirt capabilities: %w", err)
	}
	for _, m := range caps.Host.SecModels {
		if m.Model != "dac" {
			continue
		}
		for _, bl := range m.BaseLabels {
			if bl.Type == typ {
				return parseDACLabel(bl.Label)
			}
		}
	}
	return 0, 0, nil // no DAC model: QEMU runs as root
}

func parseDACLabel(label string) (int, int, error) {
	u, g, ok := strings.Cut(strings.TrimSpace(label), ":")
	if !ok {
		return 0, 0, fmt.Errorf("libvirt DAC label %q: want +UID:+GID", label)
	}
	uid, err1 := strconv.Atoi(strings.TrimPrefix(u, "+"))
	gid, err2 := strconv.Atoi(strings.TrimPrefix(g, "+"))
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("libvirt DAC label %q: want +UID:+GID", label)
	}
	return uid, gid, nil
}

// Domains lists the names of every domain.
func (c *Conn) Domains() ([]string, error) {
	ds, _, err := c.l.ConnectListAllDomains(1, 0)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.Name
	}
	return out, nil
}

// DomainTypeOf returns a domain's type ("kvm" or "qemu"), "qemu" when it
// cannot be read.
func DomainTypeOf(c *Conn, name string) string {
	x, err := c.DomainXML(name, true)
	if err != nil {
		return "qemu"
	}
	var d libvirtxml.Domain
	if d.Unmarshal(x) != nil || d.Type == "" {
		return "qemu"
	}
	return d.Type
}
