package mastertarget

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
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

	opened map[string][]*blockdev.File
}

func (p *FilePrimary) OriginalDisks(ctx context.Context, vm string, disks []journal.Disk) ([]blockdev.Device, error) {
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

func (p *FilePrimary) CreateDisks(ctx context.Context, vm string, disks []journal.Disk) ([]blockdev.Device, []string, error) {
	dir := filepath.Join(p.AlternateDir, vm)
	if err := os.MkdirAll(dir, 0o700); err != nil {
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
	return devs, paths, nil
}

func (p *FilePrimary) Start(ctx context.Context, vm, location string) error {
	if p.StartHook == "" {
		return nil
	}
	args := []string{vm, location}
	for k, v := range p.Disks {
		if strings.HasPrefix(k, vm+":") {
			args = append(args, strings.TrimPrefix(k, vm+":")+"="+v)
		}
	}
	if out, err := exec.CommandContext(ctx, p.StartHook, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("start hook: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
