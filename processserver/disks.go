package processserver

import (
	"context"
	"os"
	"path/filepath"
	"strings"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
)

// prepareDisks gives the VM its disks: copy-on-write overlays for a test
// failover when compute runs on devices (no copy: start time does not grow
// with disk size), image files materialized from the point otherwise.
func (s *Server) prepareDisks(ctx context.Context, vm journal.VM, point ferry.Point, test bool, slot string) ([]DiskSpec, string, error) {
	dir := filepath.Join(s.cfg.DataDir, "vms", filepath.FromSlash(slot))
	if err := os.RemoveAll(dir); err != nil {
		return nil, "", err
	}
	// Traversable, not listable: a hypervisor that runs as its own user
	// (libvirt's QEMU) opens the images by path.
	if err := mkdirTraversable(s.cfg.DataDir, dir); err != nil {
		return nil, "", err
	}
	dc, devices := s.compute.(DeviceCompute)
	devices = devices && dc.AcceptsDevices()
	// A test failover never copies the point: the compute layer gets
	// copy-on-write overlays as devices, or over NBD when it needs paths.
	overlay := test && (devices || s.nbd != nil)
	var specs []DiskSpec
	var files []*blockdev.File
	fail := func(err error) ([]DiskSpec, string, error) {
		for _, f := range files {
			f.Close()
		}
		return nil, "", err
	}
	for i, d := range vm.Disks {
		if overlay {
			scratch, err := blockdev.CreateFile(filepath.Join(dir, string(d.Name)+".scratch"), d.Size)
			if err != nil {
				return fail(err)
			}
			files = append(files, scratch)
			ov, err := s.j.OpenOverlay(ctx, vm.Name, point.ID, i, s.scratch.wrap(slot, scratch))
			if err != nil {
				return fail(err)
			}
			spec := DiskSpec{Name: string(d.Name), Device: ov}
			if !devices {
				e := s.addExport(NBDExport{Name: exportName(string(vm.Name), "test", string(d.Name)), VM: string(vm.Name), Disk: string(d.Name),
					Point: point, Writable: true, Test: true, slot: slot}, ov)
				spec.Path = e.URI
			}
			specs = append(specs, spec)
			continue
		}
		path := filepath.Join(dir, string(d.Name)+".img")
		f, err := blockdev.CreateFile(path, d.Size)
		if err != nil {
			return fail(err)
		}
		files = append(files, f)
		if err := s.j.Materialize(ctx, vm.Name, point.ID, i, f, true); err != nil {
			return fail(err)
		}
		specs = append(specs, DiskSpec{Name: string(d.Name), Device: f, Path: path})
	}
	s.filesMu.Lock()
	s.files[slot] = files
	s.filesMu.Unlock()
	if overlay && !devices {
		return specs, "copy-on-write overlays of the point served over NBD (nothing copied)", nil
	}
	if overlay {
		return specs, "copy-on-write overlays of the point (nothing copied)", nil
	}
	return specs, "materialized under " + dir, nil
}

// mkdirTraversable makes dir and the directories between root and it with
// mode 0711.
func mkdirTraversable(root, dir string) error {
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return err
	}
	for p := dir; ; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o711); err != nil {
			return err
		}
		if rel, err := filepath.Rel(root, p); err != nil || rel == "." || strings.HasPrefix(rel, "..") {
			return nil
		}
	}
}

// dropExports stops serving the NBD exports of a slot.
func (s *Server) dropExports(slot string) {
	for _, e := range s.Exports() {
		if e.slot == slot {
			s.dropExport(e.Name)
		}
	}
}

// closeDisks closes a slot's files and gives back its scratch quota.
func (s *Server) closeDisks(slot string) {
	defer s.scratch.release(slot)
	s.filesMu.Lock()
	files := s.files[slot]
	delete(s.files, slot)
	s.filesMu.Unlock()
	for _, f := range files {
		f.Close()
	}
}
