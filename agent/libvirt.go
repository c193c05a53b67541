package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ferrydr/ferry/pkg/virt"
	"github.com/ferrydr/ferry/pkg/wire"
	ferryv1 "github.com/ferrydr/ferry/proto/ferry/v1"
)

// LibvirtDomain is a protected machine that runs as a libvirt domain on
// the agent's host: the agent reads its virtual hardware for the process
// server, quiesces it through its QEMU guest agent and shuts it down for a
// planned failover.
type LibvirtDomain struct {
	Conn *virt.Conn
	Name string
	// ShutdownTimeout bounds a graceful (ACPI) shutdown before the domain
	// is destroyed.
	ShutdownTimeout time.Duration
}

// Describe reads the domain's hardware. disks maps each replicated disk's
// name to its path; served over NBD, the domain's disk is the export of
// that name instead. What libvirt does not know (DHCP, sshd settings) stays
// unknown.
func (d LibvirtDomain) Describe(disks map[string]string, overNBD bool) (*ferryv1.MachineInfo, error) {
	x, err := d.Conn.DomainXML(d.Name, true)
	if err != nil {
		return nil, err
	}
	bySource := map[string]string{}
	var names []string
	for name, path := range disks {
		names = append(names, name)
		if overNBD {
			bySource["nbd:"+name] = name
		} else {
			bySource[filepath.Clean(path)] = name
		}
	}
	hw, osFamily, err := virt.ReadHardware(x, func(src string) string { return bySource[src] }, names)
	if err != nil {
		return nil, err
	}
	return &ferryv1.MachineInfo{Os: osFamily, Hypervisor: "kvm", Hardware: wire.HardwareProto(&hw)}, nil
}

// Freeze quiesces the guest's file systems (fsfreeze through the QEMU guest
// agent).
func (d LibvirtDomain) Freeze(ctx context.Context) error {
	n, err := d.Conn.Freeze(d.Name)
	if err == nil && n == 0 {
		err = fmt.Errorf("domain %s froze no file system", d.Name)
	}
	return err
}

// Thaw lets the guest's file systems go on.
func (d LibvirtDomain) Thaw(ctx context.Context) error {
	_, err := d.Conn.Thaw(d.Name)
	return err
}

// Shutdown shuts the domain down gracefully, or destroys it after the
// timeout: either way the machine writes nothing more.
func (d LibvirtDomain) Shutdown(ctx context.Context) error {
	_, err := d.Conn.Shutdown(ctx, d.Name, d.ShutdownTimeout)
	return err
}

// OwnSocket gives the NBD front end's Unix socket to the user the domain's
// QEMU runs as (libvirt's DAC label), mode 0600: QEMU and root can open the
// disks, nobody else. It returns that user, for the peer-credential check.
func (d LibvirtDomain) OwnSocket(path string) (int, error) {
	uid, gid, err := d.Conn.QEMUUser(virt.DomainTypeOf(d.Conn, d.Name))
	if err == nil {
		err = os.Chmod(path, 0o600)
	}
	if err == nil {
		err = os.Chown(path, uid, gid)
	}
	if err != nil {
		return -1, fmt.Errorf("nbd socket %s for QEMU: %w", path, err)
	}
	return uid, nil
}
