package journal

import (
	"context"
	"fmt"
	"sync"

	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
)

// Overlay is a disk as of a recovery point, readable and writable without
// materializing it: reads come from the newest journaled write of each
// block up to the point (verified against its xxhash), writes go to a
// scratch device. The point and the journal are never changed. Opening one
// reads only the journal's metadata, so it takes time proportional to the
// journal, not to the disk's size.
type Overlay struct {
	j       *Journal
	vm      ferry.VMID
	size    int64
	bs      int64
	index   map[int64]ferry.Seq // block -> newest write up to the point
	base    blockdev.Device
	scratch blockdev.Device

	mu       sync.Mutex
	written  map[int64]bool // blocks the overlay's user wrote (in scratch)
	cacheSeq ferry.Seq      // the last decoded write, for sequential reads
	cache    []byte
	cacheRec Record
}

// OpenOverlay opens disk of vm as of point upTo over scratch, which must
// be as large as the disk and is where writes go.
func (j *Journal) OpenOverlay(ctx context.Context, name ferry.VMID, upTo ferry.Seq, disk int, scratch blockdev.Device) (*Overlay, error) {
	o := &Overlay{j: j, vm: name, index: map[int64]ferry.Seq{}, scratch: scratch, written: map[int64]bool{}}
	if b := j.Base(name); b != nil && disk >= 0 && disk < len(b) {
		o.base = b[disk]
	}
	err := j.db.View(func(tx *bolt.Tx) error {
		vm, err := getVMDisk(tx, name, disk)
		if err != nil {
			return err
		}
		if upTo > vm.LastSeq {
			return fmt.Errorf("vm %s: overlay at %d: %w", name, upTo, ErrNoPoint)
		}
		o.size, o.bs = vm.Disks[disk].Size, int64(blockdev.BlockSize)
		c := tx.Bucket(vmBucketName(name)).Bucket(bucketMeta).Cursor()
		for k, v := c.First(); k != nil && keySeq(k) <= upTo; k, v = c.Next() {
			r, err := decodeMeta(name, keySeq(k), v)
			if err != nil {
				return err
			}
			if r.Kind != KindWrite || r.Disk != disk {
				continue
			}
			for b := r.Offset / o.bs; b < (r.Offset+int64(r.Length))/o.bs; b++ {
				o.index[b] = r.Seq
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if scratch.Size() != o.size {
		return nil, fmt.Errorf("overlay vm %s disk %d: scratch is %d bytes, disk is %d", name, disk, scratch.Size(), o.size)
	}
	return o, nil
}

func (o *Overlay) Size() int64 { return o.size }

func (o *Overlay) Sync(ctx context.Context) error { return o.scratch.Sync(ctx) }

// readBlock fills p (one block) with block b as the overlay shows it.
func (o *Overlay) readBlockLocked(ctx context.Context, b int64, p []byte) error {
	if o.written[b] {
		_, err := o.scratch.ReadAt(ctx, p, b*o.bs)
		return err
	}
	seq, ok := o.index[b]
	if !ok {
		if o.base != nil {
			_, err := o.base.ReadAt(ctx, p, b*o.bs)
			return err
		}
		clear(p)
		return nil
	}
	if seq != o.cacheSeq {
		err := o.j.db.View(func(tx *bolt.Tx) error {
			bk := tx.Bucket(vmBucketName(o.vm))
			if bk == nil {
				return fmt.Errorf("vm %s: %w", o.vm, ErrNoVM)
			}
			r, err := decodeMeta(o.vm, seq, bk.Bucket(bucketMeta).Get(seqKey(seq)))
			if err != nil {
				return err
			}
			vm, err := getVM(tx, o.vm)
			if err != nil {
				return err
			}
			payload, err := o.j.payloads().get(ctx, bk.Bucket(bucketData), vm.ColdSeq, &r, seqKey(seq))
			if err != nil {
				return &CorruptError{VM: o.vm, Seq: seq, Disk: r.Disk, Offset: r.Offset, Err: err}
			}
			out, err := decode(nil, r.Codec, payload, r.Length, r.Sum)
			if err != nil {
				return &CorruptError{VM: o.vm, Seq: seq, Disk: r.Disk, Offset: r.Offset, Err: err}
			}
			// payload is only valid in the transaction: keep a copy.
			o.cache, o.cacheRec, o.cacheSeq = append(o.cache[:0], out...), r, seq
			return nil
		})
		if err != nil {
			return err
		}
	}
	rel := b*o.bs - o.cacheRec.Offset
	copy(p, o.cache[rel:rel+o.bs])
	return nil
}

func (o *Overlay) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > o.size {
		return 0, fmt.Errorf("read %d bytes at %d of a %d-byte overlay: %w", len(p), off, o.size, blockdev.ErrOutOfRange)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	blk := make([]byte, o.bs)
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		b, in := pos/o.bs, pos%o.bs
		if err := o.readBlockLocked(ctx, b, blk); err != nil {
			return n, err
		}
		n += copy(p[n:], blk[in:])
	}
	return n, nil
}

// WriteAt writes to the scratch device; a partial block is merged with the
// block's content first (copy on write).
func (o *Overlay) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > o.size {
		return 0, fmt.Errorf("write %d bytes at %d of a %d-byte overlay: %w", len(p), off, o.size, blockdev.ErrOutOfRange)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	blk := make([]byte, o.bs)
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		b, in := pos/o.bs, pos%o.bs
		c := min(int64(len(p)-n), o.bs-in)
		if c < o.bs && !o.written[b] {
			if err := o.readBlockLocked(ctx, b, blk); err != nil {
				return n, err
			}
			copy(blk[in:], p[n:n+int(c)])
			if _, err := o.scratch.WriteAt(ctx, blk, b*o.bs); err != nil {
				return n, err
			}
		} else if _, err := o.scratch.WriteAt(ctx, p[n:n+int(c)], pos); err != nil {
			return n, err
		}
		o.written[b] = true
		n += int(c)
	}
	return n, nil
}

// Written is the number of blocks the overlay's user has written.
func (o *Overlay) Written() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.written)
}
