package mastertarget

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/virt"
)

// LibvirtPrimary is a primary site whose machines are libvirt domains: the
// master target keeps a primary domain shut down while its VM is
// reprotected from the recovery site, starts it on its written-back disks
// after an original-location failback, and after an alternate-location
// failback defines a new domain with the original's hardware on the new
// disks.
type LibvirtPrimary struct {
	*FilePrimary
	Conn *virt.Conn
	// Domains maps a VM to its primary domain.
	Domains map[string]string
	// ShutdownTimeout bounds a graceful shutdown before destroy (default
	// 1 min).
	ShutdownTimeout time.Duration
}

func (p *LibvirtPrimary) domain(vm string) (string, error) {
	d, ok := p.Domains[vm]
	if !ok {
		return "", fmt.Errorf("no primary domain configured for vm %s (ferry-mt --libvirt-domain %s=DOMAIN)", vm, vm)
	}
	return d, nil
}

// Stop shuts the primary domain down if it runs: the seed keeps the
// primary copy shut down during reprotect, so that nothing but reverse
// replication writes its disks.
func (p *LibvirtPrimary) Stop(ctx context.Context, vm string) error {
	d, err := p.domain(vm)
	if err != nil {
		return err
	}
	timeout := p.ShutdownTimeout
	if timeout == 0 {
		timeout = time.Minute
	}
	if _, err := p.Conn.Shutdown(ctx, d, timeout); err != nil && !errors.Is(err, virt.ErrNoDomain) {
		return fmt.Errorf("shut the primary domain %s down: %w", d, err)
	}
	return nil
}

// AlternateName is the domain an alternate-location failback creates.
func AlternateName(domain string) string { return domain + "-alternate" }

// Start boots the VM after failback: its own domain at the original
// location, a new domain on the new disks at an alternate one.
func (p *LibvirtPrimary) Start(ctx context.Context, vm string, location ferry.Location) error {
	d, err := p.domain(vm)
	if err != nil {
		return err
	}
	if location != ferry.LocationAlternate {
		if err := p.Conn.Start(d); err != nil {
			return fmt.Errorf("%w (if the domain's disks are served by ferry-agent --nbd-listen, start that agent first, with the --epoch of the next reprotect)", err)
		}
		return nil
	}
	x, err := p.Conn.DomainXML(d, true)
	if err != nil {
		return err
	}
	p.mu.Lock()
	bySource, alt := map[string]string{}, map[string]string{}
	for k, path := range p.Disks {
		if name, ok := strings.CutPrefix(k, vm+":"); ok {
			bySource[filepath.Clean(path)] = name
			bySource["nbd:"+name] = name
		}
	}
	for k, path := range p.alternate {
		if name, ok := strings.CutPrefix(k, vm+":"); ok {
			alt[name] = path
			bySource["nbd:"+name] = name
		}
	}
	p.mu.Unlock()
	if len(alt) == 0 {
		return fmt.Errorf("no alternate disks of %s are known: nothing to start", vm)
	}
	hw, _, err := virt.ReadHardware(x, func(src string) string { return bySource[src] }, nil)
	if err != nil {
		return err
	}
	spec := virt.DomainSpec{Name: AlternateName(d), Type: virt.DomainTypeOf(p.Conn, d), Hardware: hw,
		ConsoleLog: filepath.Join(p.AlternateDir, vm, "console.log")}
	if len(hw.NICs) > 0 {
		spec.Network = hw.NICs[0].Network
		spec.Hardware.NICs[0].MAC = "" // the original domain keeps its MAC
	}
	for _, disk := range hw.Disks {
		path, ok := alt[disk.Name]
		if !ok {
			return fmt.Errorf("domain %s has disk %s, failback made no alternate disk for it", d, disk.Name)
		}
		spec.Disks = append(spec.Disks, virt.DiskSource{Name: disk.Name, File: path})
	}
	if err := p.Conn.Define(spec); err != nil {
		return err
	}
	if err := p.Conn.Start(spec.Name); err != nil {
		p.Conn.Undefine(spec.Name)
		return err
	}
	return nil
}

// traversable makes dir reachable (not listable) for QEMU's user.
func traversable(dir string) error {
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return err
	}
	return os.Chmod(dir, 0o711)
}
