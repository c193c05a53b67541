package journal

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"

	"github.com/cespare/xxhash/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
)

// AttachBase makes devs, one per disk of the VM and of the disks' sizes,
// what the VM's disks hold before its first record: every read of a block
// no journaled write covers comes from them. A master target attaches the
// primary machine's own disks, so that reprotect to the original location
// compares with what is there and sends only what differs. Bases are not
// persisted: the owner attaches them again after a restart.
//
// The VM's hash index, which takes blocks no write covered for zeros, is
// dropped: its hashes come from the data from then on. Retention's own
// bases are attached with AttachFolded instead.
func (j *Journal) AttachBase(ctx context.Context, name ferry.VMID, devs []blockdev.Device) error {
	if err := j.attach(ctx, name, devs); err != nil {
		return err
	}
	return j.update(func(tx *bolt.Tx) error {
		vm, err := getVM(tx, name)
		if err != nil {
			return err
		}
		if !vm.HashIndex {
			return nil
		}
		if err := dropIndex(tx, vm); err != nil {
			return err
		}
		return putVM(tx, vm)
	})
}

func (j *Journal) attach(ctx context.Context, name ferry.VMID, devs []blockdev.Device) error {
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
func (j *Journal) Base(name ferry.VMID) []blockdev.Device {
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
func (j *Journal) Apply(ctx context.Context, name ferry.VMID, upTo ferry.Seq, disk int, dst blockdev.Device, compare bool) (ApplyStats, error) {
	return j.apply(ctx, name, upTo, disk, dst, compare, nil)
}

// apply is Apply that also hands every 4 KiB block it considers to block
// with the block's xxhash (zero: the block is zeros).
func (j *Journal) apply(ctx context.Context, name ferry.VMID, upTo ferry.Seq, disk int, dst blockdev.Device, compare bool, block func(i int64, sum uint64, zero bool)) (ApplyStats, error) {
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
		return readPoint(ctx, tx, vm, upTo, disk, 0, vm.Disks[disk].Size, nil, j.payloads(), func(e Extent) error {
			data := e.Data
			if data == nil {
				if int64(len(zeros)) < e.Length {
					zeros = make([]byte, e.Length)
				}
				data = zeros[:e.Length]
			}
			st.Read += e.Length
			if block != nil {
				for b := int64(0); b < e.Length; b += blockdev.BlockSize {
					p := data[b:min(b+blockdev.BlockSize, e.Length)]
					zero := e.Data == nil || blockdev.IsZero(p)
					var sum uint64
					if !zero {
						sum = xxhash.Sum64(p)
					}
					block((e.Offset+b)/blockdev.BlockSize, sum, zero)
				}
			}
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

// bucketBaseSums holds, per VM, the xxhash64 of every non-zero block
// retention folded into its base (key: disk, block index): reads from the
// base are checked against them like reads from records.
var bucketBaseSums = []byte("basesums")

func baseSumKey(disk int, block int64) []byte {
	k := binary.BigEndian.AppendUint16(make([]byte, 0, 10), uint16(disk))
	return binary.BigEndian.AppendUint64(k, uint64(block))
}

// checkBase verifies blocks read from a base against the sums retention
// recorded. A block without a sum must be zero when the whole base was
// made by retention (vm.BaseChecked); otherwise it is from a base attached
// from outside (a primary's own disk at the master target) and is taken as
// it is.
func checkBase(tx *bolt.Tx, vm *VM, disk int, off int64, p []byte) error {
	sums := tx.Bucket(vmBucketName(vm.Name)).Bucket(bucketBaseSums)
	bs := int64(blockdev.BlockSize)
	for i := int64(0); i < int64(len(p)); i += bs {
		blk := p[i:min(i+bs, int64(len(p)))]
		var want []byte
		if sums != nil {
			want = sums.Get(baseSumKey(disk, (off+i)/bs))
		}
		bad := ""
		switch {
		case want != nil && binary.BigEndian.Uint64(want) != xxhash.Sum64(blk):
			bad = "does not match the sum recorded when retention wrote it"
		case want == nil && vm.BaseChecked && !blockdev.IsZero(blk):
			bad = "holds data where retention left zeros"
		}
		if bad != "" {
			return &CorruptError{VM: vm.Name, Seq: vm.BaseSeq, Disk: disk, Offset: off + i, Err: fmt.Errorf("%w: base image block %s", ErrChecksum, bad)}
		}
	}
	return nil
}
