package journal

import (
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Check verifies the journal's invariants for every VM: records run from 1
// to the VM's last sequence without a gap, every write's payload is present
// and matches its xxhash, every point refers to a stored record and the
// VM's point count is right. It returns the first violation.
func (j *Journal) Check(ctx context.Context) error {
	vms, err := j.VMs(ctx)
	if err != nil {
		return err
	}
	for _, vm := range vms {
		if err := j.checkVM(ctx, vm); err != nil {
			return fmt.Errorf("check vm %s: %w", vm.Name, err)
		}
	}
	return nil
}

func (j *Journal) checkVM(ctx context.Context, vm VM) error {
	if _, err := j.Verify(ctx, vm.Name, vm.LastSeq); err != nil {
		return err
	}
	return j.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(vmBucketName(vm.Name))
		if b == nil {
			return fmt.Errorf("bucket missing")
		}
		meta, data := b.Bucket(bucketMeta), b.Bucket(bucketData)
		want := vm.BaseSeq + 1
		consistent := vm.BaseSeq > 0 // points, hence trims, are cut only where the stream is write-ordered
		err := meta.ForEach(func(k, v []byte) error {
			s := keySeq(k)
			if s != want {
				return fmt.Errorf("record %d follows %d: sequence gap", s, want-1)
			}
			want++
			r, err := decodeMeta(vm.Name, s, v)
			if err != nil {
				return err
			}
			switch r.Kind {
			case KindWrite:
				if r.Disk >= len(vm.Disks) || r.Offset+int64(r.Length) > vm.Disks[r.Disk].Size {
					return fmt.Errorf("record %d: write outside disk", s)
				}
			case KindMarker:
				if !consistent {
					return fmt.Errorf("record %d: marker inside a drain", s)
				}
			case KindDrainBegin:
				consistent = false
			case KindDrainEnd:
				consistent = true
			default:
				return fmt.Errorf("record %d: unknown kind %d", s, r.Kind)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if vm.ProcessedSeq > vm.LastSeq {
			return fmt.Errorf("processed up to %d beyond the last record %d", vm.ProcessedSeq, vm.LastSeq)
		}
		if want-1 != vm.LastSeq && !(want-1 == vm.BaseSeq && vm.LastSeq == vm.BaseSeq) {
			return fmt.Errorf("last record is %d, state says %d", want-1, vm.LastSeq)
		}
		if consistent != vm.Consistent {
			return fmt.Errorf("state says consistent=%v, records say %v", vm.Consistent, consistent)
		}
		if vm.ColdSeq > vm.ProcessedSeq {
			return fmt.Errorf("sealed away up to %d beyond the processed %d", vm.ColdSeq, vm.ProcessedSeq)
		}
		err = data.ForEach(func(k, v []byte) error {
			if meta.Get(k) == nil {
				return fmt.Errorf("payload %d has no record", keySeq(k))
			}
			if keySeq(k) <= vm.ColdSeq {
				return fmt.Errorf("payload %d was sealed away (up to %d) and is still in the file", keySeq(k), vm.ColdSeq)
			}
			return nil
		})
		if err != nil {
			return err
		}
		n := 0
		err = b.Bucket(bucketPoints).ForEach(func(k, v []byte) error {
			n++
			if keySeq(k) > vm.ProcessedSeq || keySeq(k) < vm.BaseSeq || (keySeq(k) > vm.BaseSeq && meta.Get(k) == nil) {
				return fmt.Errorf("point %d refers to no stored record", keySeq(k))
			}
			_, err := decodePoint(vm.Name, keySeq(k), v)
			return err
		})
		if err != nil {
			return err
		}
		if n != vm.Points {
			return fmt.Errorf("%d points stored, state says %d", n, vm.Points)
		}
		return nil
	})
}
