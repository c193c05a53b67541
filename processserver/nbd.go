package processserver

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
	"github.com/ferrydr/ferry/pkg/nbd"
	"github.com/ferrydr/ferry/pkg/tlsca"
)

// nbdAccess says who may use the NBD exports: an operator or admin
// certificate over TLS when the server has TLS.
func (s *Server) nbdAccess() nbd.Access {
	a := nbd.Access{Insecure: s.cfg.NBDInsecure}
	if s.cfg.TLS != nil {
		cfg := s.cfg.TLS.Clone()
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		a.TLS = cfg
		a.Authorize = func(st tls.ConnectionState) error {
			id, err := tlsca.IdentityOf(st.VerifiedChains[0][0])
			if err != nil {
				return err
			}
			if id.Role != tlsca.RoleOperator && id.Role != tlsca.RoleAdmin {
				return fmt.Errorf("%s may not use recovery point exports (an operator or admin certificate is needed)", id)
			}
			return nil
		}
	}
	return a
}

// NBDExport describes a disk served over NBD.
type NBDExport struct {
	Name     string
	URI      string
	VM       string
	Disk     string
	Point    ferry.Point
	Writable bool
	// Test names the export of a running test failover's disk (removed by
	// its cleanup, not by UnexportNBD).
	Test    bool
	Created time.Time
	slot    string
}

// exportName is an export's name: readable, and with 96 random bits so
// that nobody can open an export whose name they were not told.
func exportName(parts ...string) string {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return strings.Join(append(parts, hex.EncodeToString(b[:])), "-")
}

func (s *Server) addExport(e NBDExport, dev blockdev.Device) NBDExport {
	e.URI, e.Created = s.nbdURI(e.Name), s.clock.Now()
	s.nbd.Add(nbd.Export{Name: e.Name, Device: dev, ReadOnly: !e.Writable, BlockSize: blockdev.BlockSize})
	s.exportsMu.Lock()
	s.exports[e.Name] = e
	s.exportsMu.Unlock()
	return e
}

func (s *Server) dropExport(name string) {
	if s.nbd != nil {
		s.nbd.Remove(name)
	}
	s.exportsMu.Lock()
	delete(s.exports, name)
	s.exportsMu.Unlock()
}

// Exports lists the NBD exports, sorted by name.
func (s *Server) Exports() []NBDExport {
	s.exportsMu.Lock()
	defer s.exportsMu.Unlock()
	out := make([]NBDExport, 0, len(s.exports))
	for _, e := range s.exports {
		out = append(out, e)
	}
	sort.Slice(out, func(i, k int) bool { return out[i].Name < out[k].Name })
	return out
}

// ExportNBD serves one disk of a point over NBD without materializing it:
// read-only, or copy-on-write with the writes in a scratch file under the
// data directory (the point and the replica never change), charged to the
// scratch quota. It is served until UnexportNBD.
func (s *Server) ExportNBD(ctx context.Context, vmName, point, disk string, writable bool) (NBDExport, error) {
	if s.nbd == nil {
		return NBDExport{}, ErrNoNBD
	}
	vm, err := s.j.VM(ctx, ferry.VMID(vmName))
	if err != nil {
		return NBDExport{}, err
	}
	di, err := vm.DiskIndex(ferry.DiskID(disk))
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
	e := NBDExport{Name: exportName(vmName, disk, strconv.FormatUint(uint64(p.ID), 10), kind), VM: vmName, Disk: disk, Point: p, Writable: writable}
	e.slot = "nbd/" + e.Name
	var scratch blockdev.Device = blockdev.NewMemory(vm.Disks[di].Size) // stays empty: nothing writes it
	if writable {
		dir := filepath.Join(s.cfg.DataDir, "nbd")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return NBDExport{}, err
		}
		f, err := blockdev.CreateFile(filepath.Join(dir, e.Name+".scratch"), vm.Disks[di].Size)
		if err != nil {
			return NBDExport{}, err
		}
		s.filesMu.Lock()
		s.files[e.slot] = []*blockdev.File{f}
		s.filesMu.Unlock()
		scratch = s.scratch.wrap(e.slot, f)
	}
	ov, err := s.j.OpenOverlay(ctx, vm.Name, p.ID, di, scratch)
	if err != nil {
		s.closeDisks(e.slot)
		os.Remove(filepath.Join(s.cfg.DataDir, "nbd", e.Name+".scratch"))
		return NBDExport{}, err
	}
	e = s.addExport(e, ov)
	s.log.Info("nbd export", "name", e.Name, "point", p.ID, "writable", writable)
	return e, nil
}

// UnexportNBD stops serving an export of a point and removes its scratch
// file. Only a listed export's name is accepted; the disks of a running
// test failover go with its cleanup.
func (s *Server) UnexportNBD(ctx context.Context, name string) error {
	if s.nbd == nil {
		return ErrNoNBD
	}
	s.exportsMu.Lock()
	e, ok := s.exports[name]
	s.exportsMu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %q (ferryctl exports lists them)", ErrNoExport, name)
	}
	if e.Test {
		return fmt.Errorf("%s is a disk of %s's running test failover: clean the test failover up instead", name, e.VM)
	}
	s.dropExport(name)
	s.closeDisks(e.slot)
	if !e.Writable {
		return nil
	}
	err := os.Remove(filepath.Join(s.cfg.DataDir, "nbd", e.Name+".scratch"))
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	return err
}
