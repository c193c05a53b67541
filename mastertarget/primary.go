package mastertarget

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/proc"
)

// FilePrimary is the primary site of real machines: original disks are
// image files or block devices named per VM and disk, alternate disks are
// new sparse images in a directory, and a hook command starts the VM.
type FilePrimary struct {
	// Disks maps "VM:DISK" to a path.
	Disks map[string]string
	// AlternateDir holds disks created for alternate location recovery.
	AlternateDir string
	// StartHook runs as "HOOK VM LOCATION DISK=PATH..."; empty: the
	// operator starts the VM.
	StartHook string

	mu sync.Mutex
	// alternate maps "VM:DISK" to the disks CreateDisks made.
	alternate map[string]string
}

func (p *FilePrimary) OriginalDisks(ctx context.Context, vm string, disks []ferry.Disk) ([]blockdev.Device, error) {
	var out []blockdev.Device
	for _, d := range disks {
		path, ok := p.Disks[vm+":"+string(d.Name)]
		if !ok {
			return nil, fmt.Errorf("no original disk configured for %s:%s (ferry-mt --disk %s:%s=PATH)", vm, d.Name, vm, d.Name)
		}
		f, err := blockdev.OpenFile(path, false)
		if err != nil {
			return nil, err
		}
		if f.Size() != d.Size {
			f.Close()
			return nil, fmt.Errorf("original disk %s is %d bytes, the VM's disk %s is %d", path, f.Size(), d.Name, d.Size)
		}
		out = append(out, f)
	}
	return out, nil
}

func (p *FilePrimary) CreateDisks(ctx context.Context, vm string, disks []ferry.Disk) ([]blockdev.Device, []string, error) {
	dir := filepath.Join(p.AlternateDir, vm)
	// Traversable, not listable: a hypervisor that runs as its own user
	// (libvirt's QEMU) opens the new disks by path.
	if err := traversable(p.AlternateDir); err != nil {
		return nil, nil, err
	}
	if err := traversable(dir); err != nil {
		return nil, nil, err
	}
	var devs []blockdev.Device
	var paths []string
	for _, d := range disks {
		path := filepath.Join(dir, string(d.Name)+".img")
		f, err := blockdev.CreateFile(path, d.Size)
		if err != nil {
			return nil, nil, err
		}
		devs, paths = append(devs, f), append(paths, path)
	}
	p.mu.Lock()
	if p.alternate == nil {
		p.alternate = map[string]string{}
	}
	for i, d := range disks {
		p.alternate[vm+":"+string(d.Name)] = paths[i]
	}
	p.mu.Unlock()
	return devs, paths, nil
}

func (p *FilePrimary) Start(ctx context.Context, vm string, location ferry.Location) error {
	if p.StartHook == "" {
		return nil
	}
	args := []string{vm, string(location)}
	p.mu.Lock()
	disks := p.Disks
	if location == ferry.LocationAlternate {
		// The VM starts on the disks failback wrote, not the originals.
		disks = p.alternate
	}
	var names []string
	for k := range disks {
		if strings.HasPrefix(k, vm+":") {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	for _, k := range names {
		args = append(args, strings.TrimPrefix(k, vm+":")+"="+disks[k])
	}
	p.mu.Unlock()
	if len(names) == 0 {
		return fmt.Errorf("no %s disks of %s are known: nothing to start", location, vm)
	}
	_, err := proc.Run(ctx, proc.Command{What: "start hook", Path: p.StartHook, Args: args})
	return err
}
