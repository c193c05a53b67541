package processserver

import (
	"context"
	"errors"
	"os"
	"path/filepath"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/journal"
)

// baseDevices returns the VM's base images, creating sparse ones on first
// use; they stay open while the server runs.
func (s *Server) baseDevices(vm journal.VM) ([]blockdev.Device, error) {
	slot := "base/" + string(vm.Name)
	s.filesMu.Lock()
	files := s.files[slot]
	s.filesMu.Unlock()
	if files == nil {
		dir := filepath.Join(s.cfg.DataDir, "base", string(vm.Name))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		for _, d := range vm.Disks {
			path := filepath.Join(dir, string(d.Name)+".img")
			f, err := blockdev.OpenFile(path, false)
			if errors.Is(err, os.ErrNotExist) {
				if vm.BaseSeq > 0 {
					return nil, err // the base is gone: reading would be wrong
				}
				f, err = blockdev.CreateFile(path, d.Size)
			}
			if err != nil {
				for _, f := range files {
					f.Close()
				}
				return nil, err
			}
			files = append(files, f)
		}
		s.filesMu.Lock()
		s.files[slot] = files
		s.filesMu.Unlock()
	}
	out := make([]blockdev.Device, len(files))
	for i, f := range files {
		out[i] = f
	}
	return out, nil
}

// serverBases is where the object store tier puts the base images of a
// VM it rebuilds: the retention's own files under DATA/base/VM.
type serverBases struct{ s *Server }

func (b serverBases) Drop(vm ferry.VMID) error {
	slot := "base/" + string(vm)
	b.s.filesMu.Lock()
	files := b.s.files[slot]
	delete(b.s.files, slot)
	b.s.filesMu.Unlock()
	for _, f := range files {
		f.Close()
	}
	return os.RemoveAll(filepath.Join(b.s.cfg.DataDir, "base", string(vm)))
}

func (b serverBases) Create(vm journal.VM) ([]blockdev.Device, error) {
	if err := b.Drop(vm.Name); err != nil {
		return nil, err
	}
	vm.BaseSeq = 0 // new files, all zeros
	return b.s.baseDevices(vm)
}

// attachBases attaches the base images of VMs that retention trimmed
// before the server last stopped.
func (s *Server) attachBases(ctx context.Context) error {
	vms, err := s.j.VMs(ctx)
	if err != nil {
		return err
	}
	for _, vm := range vms {
		if vm.BaseSeq == 0 {
			continue
		}
		devs, err := s.baseDevices(vm)
		if err != nil {
			return err
		}
		// Retention's bases were folded from the VM's own records.
		if err := s.j.AttachFolded(ctx, vm.Name, devs); err != nil {
			return err
		}
	}
	return nil
}

// applyRetention applies every protected VM's policy: app-consistent
// points beyond the policy's frequency are kept as crash-consistent, the
// points older than the retention window are deleted and the records
// before the oldest kept point are folded into the VM's base, so storage
// stays bounded under steady churn. VMs with a test failover or a failover
// in progress keep everything.
func (s *Server) applyRetention(ctx context.Context) error {
	vms, err := s.j.VMs(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, vm := range vms {
		st, err := s.ctl.state(string(vm.Name))
		if err != nil || st.Test != nil || (st.State != "" && st.State != StateEnabling && st.State != StateProtected) {
			continue
		}
		pol, err := s.policyFor(string(vm.Name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if n, err := s.j.ThinAppPoints(ctx, vm.Name, pol); err != nil {
			errs = append(errs, err)
		} else if n > 0 {
			s.log.Info("app-consistent points thinned", "vm", vm.Name, "policy", pol.Name, "points", n)
		}
		ts, err := s.j.Retain(ctx, vm.Name, pol, s.clock.Now(), func() ([]blockdev.Device, error) { return s.baseDevices(vm) })
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ts.PointsDeleted > 0 || ts.RecordsDeleted > 0 {
			s.log.Info("retention", "vm", vm.Name, "points_deleted", ts.PointsDeleted, "records_deleted", ts.RecordsDeleted, "bytes_freed", ts.BytesFreed)
		}
		if err := s.shipBase(ctx, vm.Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
