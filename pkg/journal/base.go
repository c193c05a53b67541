package journal

import (
	"bytes"
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry/pkg/blockdev"
)

// AttachBase makes devs, one per disk of the VM and of the disks' sizes,
// what the VM's disks hold before its first record: every read of a block
// no journaled write covers comes from them. A master target attaches the
// primary machine's own disks, so that reprotect to the original location
// compares with what is there and sends only what differs. Bases are not
// persisted: the owner attaches them again after a restart.
func (j *Journal) AttachBase(ctx context.Context, name VMID, devs []blockdev.Device) error {
	vm, err := j.VM(ctx, name)
	if err != nil {
		return err
	}
	if len(devs) != len(vm.Disks) {
		return fmt.Errorf("attach base to vm %s: %d devices for %d disks", name, len(devs), len(vm.Disks))
	}
	for i, d := range devs {
		if d.Size() != vm.Disks[i].Size {
			return fmt.Errorf("attach base to vm %s disk %s: device is %d bytes, disk is %d", name, vm.Disks[i].Name, d.Size(), vm.Disks[i].Size)
		}
	}
	j.baseMu.Lock()
	j.bases[name] = devs
	j.baseMu.Unlock()
	return nil
}

// Base returns the VM's base devices, or nil.
func (j *Journal) Base(name VMID) []blockdev.Device {
	j.baseMu.RLock()
	defer j.baseMu.RUnlock()
	return j.bases[name]
}

// ApplyStats says what Apply did.
type ApplyStats struct {
	Read    int64 // bytes of journaled writes considered
	Written int64 // bytes written to the target
}

// Apply writes onto dst every block of one disk that a journaled write up
// to upTo supplied (the newest write of each), so that dst, holding the
// VM's base, becomes the disk as of upTo. With compare set it reads dst
// first and writes only the 4 KiB blocks that differ.
func (j *Journal) Apply(ctx context.Context, name VMID, upTo Seq, disk int, dst blockdev.Device, compare bool) (ApplyStats, error) {
	var st ApplyStats
	err := j.db.View(func(tx *bolt.Tx) error {
		vm, err := getVM(tx, name)
		if err != nil {
			return err
		}
		if disk < 0 || disk >= len(vm.Disks) || dst.Size() != vm.Disks[disk].Size {
			return fmt.Errorf("apply vm %s disk %d: %w or target of the wrong size", name, disk, ErrNoDisk)
		}
		var zeros, have []byte
		return readPoint(ctx, tx, vm, upTo, disk, 0, vm.Disks[disk].Size, nil, j.seal, func(e Extent) error {
			data := e.Data
			if data == nil {
				if int64(len(zeros)) < e.Length {
					zeros = make([]byte, e.Length)
				}
				data = zeros[:e.Length]
			}
			st.Read += e.Length
			if !compare {
				st.Written += e.Length
				_, err := dst.WriteAt(ctx, data, e.Offset)
				return err
			}
			if int64(len(have)) < e.Length {
				have = make([]byte, e.Length)
			}
			if _, err := dst.ReadAt(ctx, have[:e.Length], e.Offset); err != nil {
				return err
			}
			for b := int64(0); b < e.Length; b += blockdev.BlockSize {
				end := min(b+blockdev.BlockSize, e.Length)
				if bytes.Equal(have[b:end], data[b:end]) {
					continue
				}
				if _, err := dst.WriteAt(ctx, data[b:end], e.Offset+b); err != nil {
					return err
				}
				st.Written += end - b
			}
			return nil
		})
	})
	if err == nil {
		err = dst.Sync(ctx)
	}
	return st, err
}
