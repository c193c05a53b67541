package processserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
	"github.com/ferrydr/ferry/pkg/nbd"
)

// ErrNoNBD is returned when NBD exports are asked for without a listener.
var ErrNoNBD = errors.New("no NBD listener: start ferry-ps with --nbd-listen")

// NBDExport describes a disk served over NBD.
type NBDExport struct {
	Name  string
	URI   string
	Point journal.Point
}

// ExportNBD serves one disk of a point over NBD without materializing it:
// read-only, or copy-on-write with the writes in a scratch file under the
// data directory (the point and the replica never change). It is served
// until UnexportNBD.
func (s *Server) ExportNBD(ctx context.Context, vmName, point, disk string, writable bool) (NBDExport, error) {
	if s.nbd == nil {
		return NBDExport{}, ErrNoNBD
	}
	vm, err := s.j.VM(ctx, journal.VMID(vmName))
	if err != nil {
		return NBDExport{}, err
	}
	di, err := vm.DiskIndex(journal.DiskID(disk))
	if err != nil {
		return NBDExport{}, err
	}
	p, err := s.ResolvePoint(ctx, vm.Name, point)
	if err != nil {
		return NBDExport{}, err
	}
	kind := "ro"
	if writable {
		kind = "cow"
	}
	name := fmt.Sprintf("%s-%s-%d-%s", vmName, disk, p.ID, kind)
	var scratch blockdev.Device = blockdev.NewMemory(vm.Disks[di].Size) // stays empty: nothing writes it
	if writable {
		dir := filepath.Join(s.cfg.DataDir, "nbd")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return NBDExport{}, err
		}
		f, err := blockdev.CreateFile(filepath.Join(dir, name+".scratch"), vm.Disks[di].Size)
		if err != nil {
			return NBDExport{}, err
		}
		s.filesMu.Lock()
		s.files["nbd/"+name] = []*blockdev.File{f}
		s.filesMu.Unlock()
		scratch = f
	}
	ov, err := s.j.OpenOverlay(ctx, vm.Name, p.ID, di, scratch)
	if err != nil {
		return NBDExport{}, err
	}
	s.nbd.Add(nbd.Export{Name: name, Device: ov, ReadOnly: !writable, BlockSize: blockdev.BlockSize})
	s.log.Info("nbd export", "name", name, "point", p.ID, "writable", writable)
	return NBDExport{Name: name, URI: s.nbdURI(name), Point: p}, nil
}

// UnexportNBD stops serving an export and removes its scratch file.
func (s *Server) UnexportNBD(ctx context.Context, name string) error {
	if s.nbd == nil {
		return ErrNoNBD
	}
	s.nbd.Remove(name)
	s.closeDisks("nbd/" + name)
	err := os.Remove(filepath.Join(s.cfg.DataDir, "nbd", name+".scratch"))
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	return err
}
