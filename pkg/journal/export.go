package journal

import (
	"context"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry"
)

// Records calls fn with each of the VM's records after from up to upTo,
// in order, as Append took them: a write's payload encoded by its codec
// but not encrypted, its sum checked. The record and its payload are fn's
// only for the call. What the journal holds no more (folded into the base
// by retention) is not there: the first record may come after from+1.
func (j *Journal) Records(ctx context.Context, name ferry.VMID, from, upTo ferry.Seq, fn func(*Record) error) error {
	return j.db.View(func(tx *bolt.Tx) error {
		vm, err := getVM(tx, name)
		if err != nil {
			return err
		}
		src := j.payloads()
		b := tx.Bucket(vmBucketName(name))
		data := b.Bucket(bucketData)
		c := b.Bucket(bucketMeta).Cursor()
		var buf []byte
		for k, v := c.Seek(seqKey(from + 1)); k != nil && keySeq(k) <= upTo; k, v = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			r, err := decodeMeta(name, keySeq(k), v)
			if err != nil {
				return err
			}
			if r.Kind == KindWrite && r.Codec != CodecZero {
				if r.Payload, err = src.get(ctx, data, vm.ColdSeq, &r, k); err != nil {
					return &CorruptError{VM: name, Seq: r.Seq, Disk: r.Disk, Offset: r.Offset, Err: err}
				}
				// The payload leaves the transaction: it is checked, and
				// copied when it is bbolt's own memory.
				out, err := decode(buf, r.Codec, r.Payload, r.Length, r.Sum)
				if err != nil {
					return &CorruptError{VM: name, Seq: r.Seq, Disk: r.Disk, Offset: r.Offset, Err: err}
				}
				if r.Codec != CodecRaw {
					buf = out
				}
				if data.Get(k) != nil && !r.Encrypted {
					r.Payload = append([]byte(nil), r.Payload...)
				}
				r.Encrypted = false
			}
			if err := fn(&r); err != nil {
				return err
			}
		}
		return nil
	})
}

// SetPoints makes pts the VM's recovery points, replacing those it had:
// a process server that rebuilt the VM's journal from its records gives it
// back the points it had where they were made. Every point must lie on a
// processed record after the VM's base, or at the base.
func (j *Journal) SetPoints(ctx context.Context, name ferry.VMID, pts []ferry.Point) error {
	pts = append([]ferry.Point(nil), pts...)
	sort.Slice(pts, func(a, b int) bool { return pts[a].ID < pts[b].ID })
	return j.update(func(tx *bolt.Tx) error {
		vm, err := getVM(tx, name)
		if err != nil {
			return err
		}
		b := tx.Bucket(vmBucketName(name))
		meta := b.Bucket(bucketMeta)
		for i := range pts {
			p := &pts[i]
			// A point may sit at the base's own sequence (retention keeps
			// the oldest point there), or on a processed record after it.
			if p.ID < vm.BaseSeq || p.ID > vm.ProcessedSeq || (p.ID > vm.BaseSeq && meta.Get(seqKey(p.ID)) == nil) || p.ID == 0 {
				return fmt.Errorf("vm %s: point %d: %w: not the base's or a processed record after it [%d, %d]", name, p.ID, ErrInvalid, vm.BaseSeq, vm.ProcessedSeq)
			}
			if p.Consistency != ferry.Crash && p.Consistency != ferry.App {
				return fmt.Errorf("vm %s: point %d: %w: consistency %d", name, p.ID, ErrInvalid, p.Consistency)
			}
			p.VM = name
		}
		if err := b.DeleteBucket(bucketPoints); err != nil {
			return err
		}
		if _, err := b.CreateBucket(bucketPoints); err != nil {
			return err
		}
		vm.Points, vm.LatestPoint = 0, time.Time{}
		for i := range pts {
			if err := putPoint(b, vm, &pts[i]); err != nil {
				return err
			}
		}
		return putVM(tx, vm)
	})
}
