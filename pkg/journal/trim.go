package journal

import (
	"context"
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
)

// TrimStats says what Trim did.
type TrimStats struct {
	PointsDeleted  int
	RecordsDeleted int
	BytesFreed     int64 // stored payload bytes deleted
	BytesApplied   int64 // disk bytes folded into the base
}

// Trim rolls the VM's base forward to record upTo, which must be
// processed: every point before upTo is deleted, every write up to upTo is
// applied to base (one device per disk, the disks' sizes, attached as the
// VM's base from then on), and those records are deleted. Points from upTo
// on read the same afterwards.
//
// It is safe against a crash at any step: points before upTo go first, so
// no remaining point can read a base that is ahead of it; applying the
// writes again is harmless; the records go last.
func (j *Journal) Trim(ctx context.Context, name ferry.VMID, upTo ferry.Seq, base []blockdev.Device) (TrimStats, error) {
	var st TrimStats
	vm, err := j.VM(ctx, name)
	if err != nil {
		return st, err
	}
	if upTo > vm.ProcessedSeq {
		return st, fmt.Errorf("trim vm %s to %d: %w: processed only up to %d", name, upTo, ErrInvalid, vm.ProcessedSeq)
	}
	if upTo <= vm.BaseSeq {
		return st, nil
	}
	if err := j.AttachFolded(ctx, name, base); err != nil {
		return st, err
	}
	// 1. Points before upTo.
	err = j.update(func(tx *bolt.Tx) error {
		vm, err := getVM(tx, name)
		if err != nil {
			return err
		}
		pts := tx.Bucket(vmBucketName(name)).Bucket(bucketPoints)
		c := pts.Cursor()
		for k, _ := c.First(); k != nil && keySeq(k) < upTo; k, _ = c.First() {
			if err := c.Delete(); err != nil {
				return err
			}
			vm.Points--
			st.PointsDeleted++
		}
		return putVM(tx, vm)
	})
	if err != nil {
		return st, err
	}
	// 2. Writes up to upTo onto the base, noting each block's sum.
	type blockSum struct {
		disk  int
		block int64
		sum   uint64
		zero  bool
	}
	var sums []blockSum
	for i, d := range base {
		as, err := j.apply(ctx, name, upTo, i, d, false, func(b int64, sum uint64, zero bool) {
			sums = append(sums, blockSum{i, b, sum, zero})
		})
		if err != nil {
			return st, fmt.Errorf("trim vm %s: roll base forward: %w", name, err)
		}
		st.BytesApplied += as.Written
	}
	// 3. The records.
	err = j.update(func(tx *bolt.Tx) error {
		vm, err := getVM(tx, name)
		if err != nil {
			return err
		}
		b := tx.Bucket(vmBucketName(name))
		meta, data := b.Bucket(bucketMeta), b.Bucket(bucketData)
		// The sums go with the records that supplied the blocks: while
		// those records exist, reads take the blocks from them.
		bsums, err := b.CreateBucketIfNotExists(bucketBaseSums)
		if err != nil {
			return err
		}
		for _, s := range sums {
			k := baseSumKey(s.disk, s.block)
			if s.zero {
				err = bsums.Delete(k)
			} else {
				err = bsums.Put(k, binary.BigEndian.AppendUint64(nil, s.sum))
			}
			if err != nil {
				return err
			}
		}
		if vm.BaseSeq == 0 {
			vm.BaseChecked = true
		}
		c := meta.Cursor()
		for k, _ := c.First(); k != nil && keySeq(k) <= upTo; k, _ = c.First() {
			if v := data.Get(k); v != nil {
				st.BytesFreed += int64(len(v))
				vm.StoredBytes -= uint64(len(v))
				if err := data.Delete(k); err != nil {
					return err
				}
			}
			if err := c.Delete(); err != nil {
				return err
			}
			st.RecordsDeleted++
		}
		vm.BaseSeq = upTo
		return putVM(tx, vm)
	})
	return st, err
}
