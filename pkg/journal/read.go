package journal

import (
	"context"
	"fmt"

	"github.com/cespare/xxhash/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry/pkg/blockdev"
)

// coverage tracks which blocks of a disk a newer write already supplies.
type coverage struct {
	words []uint64
	n     int64
	left  int64
}

func newCoverage(nblocks int64) *coverage {
	return &coverage{words: make([]uint64, (nblocks+63)/64), n: nblocks, left: nblocks}
}

func (c *coverage) covered(i int64) bool { return c.words[i/64]&(1<<(i%64)) != 0 }

func (c *coverage) set(i int64) {
	c.words[i/64] |= 1 << (i % 64)
	c.left--
}

// uncovered calls fn for each maximal run of blocks in [first, first+n)
// that no newer write covered yet, and marks them covered.
func (c *coverage) take(first, n int64, fn func(first, n int64) error) error {
	i, end := first, min(first+n, c.n)
	for i < end {
		for i < end && c.covered(i) {
			i++
		}
		start := i
		for i < end && !c.covered(i) {
			c.set(i)
			i++
		}
		if i > start {
			if err := fn(start, i-start); err != nil {
				return err
			}
		}
	}
	return nil
}

// Extent is one range of a disk as of a recovery point. Data is nil for a
// range of zeros written by the VM.
type Extent struct {
	Offset int64
	Length int64
	Data   []byte
}

// ReadPoint reads one disk as of the state after record upTo: for every
// block some write up to upTo supplied, the newest such write. It calls fn
// with extents in no particular order (newest writes first); blocks no
// write supplied are zeros and are not reported. Data is only valid during
// the call. Every payload read is checked against its xxhash; a mismatch
// stops the read with a *CorruptError.
func (j *Journal) ReadPoint(ctx context.Context, name VMID, upTo Seq, disk int, fn func(Extent) error) error {
	return j.db.View(func(tx *bolt.Tx) error {
		vm, err := getVM(tx, name)
		if err != nil {
			return err
		}
		if disk < 0 || disk >= len(vm.Disks) {
			return fmt.Errorf("vm %s: %w: index %d", name, ErrNoDisk, disk)
		}
		if upTo > vm.LastSeq {
			return fmt.Errorf("vm %s: read up to %d: %w: last durable record is %d", name, upTo, ErrNoPoint, vm.LastSeq)
		}
		return readPoint(ctx, tx, vm, upTo, disk, 0, vm.Disks[disk].Size, fn)
	})
}

// readPoint reads [lo, hi) of a disk as of upTo; see ReadPoint.
func readPoint(ctx context.Context, tx *bolt.Tx, vm *VM, upTo Seq, disk int, lo, hi int64, fn func(Extent) error) error {
	bs := int64(vm.BlockSize)
	if bs == 0 {
		bs = blockdev.BlockSize
	}
	size := vm.Disks[disk].Size
	cov := newCoverage((size + bs - 1) / bs)
	loBlk, hiBlk := lo/bs, (min(hi, size)+bs-1)/bs
	cov.left = hiBlk - loBlk
	b := tx.Bucket(vmBucketName(vm.Name))
	data := b.Bucket(bucketData)
	c := b.Bucket(bucketMeta).Cursor()
	var buf []byte
	k, v := c.Seek(seqKey(upTo))
	if k == nil || keySeq(k) > upTo {
		k, v = c.Prev()
	}
	for n := 0; k != nil && cov.left > 0; k, v = c.Prev() {
		if n++; n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if len(v) < 4 || Kind(v[0]) != KindWrite || int(v[2])<<8|int(v[3]) != disk {
			continue
		}
		r, err := decodeMeta(vm.Name, keySeq(k), v)
		if err != nil {
			return err
		}
		first, end := max(r.Offset/bs, loBlk), min((r.Offset+int64(r.Length)+bs-1)/bs, hiBlk)
		if first >= end {
			continue
		}
		var raw []byte // decoded lazily: only when some block is still uncovered
		err = cov.take(first, end-first, func(first, n int64) error {
			off := first * bs
			length := min(n*bs, r.Offset+int64(r.Length)-off)
			if r.Codec == CodecZero {
				return fn(Extent{Offset: off, Length: length})
			}
			if raw == nil {
				payload := data.Get(k)
				if payload == nil {
					return &CorruptError{VM: vm.Name, Seq: r.Seq, Disk: disk, Offset: r.Offset, Err: fmt.Errorf("%w: payload missing", ErrChecksum)}
				}
				var err error
				if raw, err = decode(buf, r.Codec, payload, r.Length, r.Sum); err != nil {
					return &CorruptError{VM: vm.Name, Seq: r.Seq, Disk: disk, Offset: r.Offset, Err: err}
				}
				if r.Codec != CodecRaw {
					buf = raw
				}
			}
			rel := off - r.Offset
			return fn(Extent{Offset: off, Length: length, Data: raw[rel : rel+length]})
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// Materialize writes one disk as of the state after record upTo into dst,
// which must be the disk's size. When dstZeroed is set dst already reads as
// zeros (a new sparse file) and zero ranges are skipped; otherwise they are
// written.
func (j *Journal) Materialize(ctx context.Context, name VMID, upTo Seq, disk int, dst blockdev.Device, dstZeroed bool) error {
	vm, err := j.VM(ctx, name)
	if err != nil {
		return err
	}
	if disk < 0 || disk >= len(vm.Disks) {
		return fmt.Errorf("vm %s: %w: index %d", name, ErrNoDisk, disk)
	}
	if dst.Size() != vm.Disks[disk].Size {
		return fmt.Errorf("materialize vm %s disk %s: target is %d bytes, disk is %d", name, vm.Disks[disk].Name, dst.Size(), vm.Disks[disk].Size)
	}
	var written *coverage
	bs := int64(blockdev.BlockSize)
	if !dstZeroed {
		written = newCoverage((vm.Disks[disk].Size + bs - 1) / bs)
	}
	var zeros []byte
	writeZeros := func(off, length int64) error {
		for length > 0 {
			n := min(length, 1<<20)
			if int64(len(zeros)) < n {
				zeros = make([]byte, n)
			}
			if _, err := dst.WriteAt(ctx, zeros[:n], off); err != nil {
				return err
			}
			off, length = off+n, length-n
		}
		return nil
	}
	err = j.ReadPoint(ctx, name, upTo, disk, func(e Extent) error {
		if written != nil {
			written.take(e.Offset/bs, (e.Length+bs-1)/bs, func(int64, int64) error { return nil })
		}
		if e.Data == nil {
			if dstZeroed {
				return nil
			}
			return writeZeros(e.Offset, e.Length)
		}
		_, err := dst.WriteAt(ctx, e.Data, e.Offset)
		return err
	})
	if err != nil {
		return fmt.Errorf("materialize vm %s disk %s at %d: %w", name, vm.Disks[disk].Name, upTo, err)
	}
	if written != nil {
		// Blocks no write supplied are zeros in the replica.
		err := written.take(0, written.n, func(first, n int64) error {
			off := first * bs
			return writeZeros(off, min(n*bs, dst.Size()-off))
		})
		if err != nil {
			return fmt.Errorf("materialize vm %s disk %s: %w", name, vm.Disks[disk].Name, err)
		}
	}
	return dst.Sync(ctx)
}

// VerifyStats counts what Verify checked.
type VerifyStats struct {
	Writes int64
	Bytes  int64
}

// Verify re-reads every write up to upTo and checks it against its xxhash.
// It returns the first *CorruptError it finds.
func (j *Journal) Verify(ctx context.Context, name VMID, upTo Seq) (VerifyStats, error) {
	var st VerifyStats
	err := j.db.View(func(tx *bolt.Tx) (err error) {
		if _, err := getVM(tx, name); err != nil {
			return err
		}
		st, err = verifyRecords(ctx, tx, name, 0, upTo, nil)
		return err
	})
	return st, err
}

// verifyRecords walks the records after from up to upTo, reads back every
// write's payload and checks it against its xxhash, and calls fn (if set)
// with each record.
func verifyRecords(ctx context.Context, tx *bolt.Tx, name VMID, from, upTo Seq, fn func(*Record)) (VerifyStats, error) {
	var st VerifyStats
	b := tx.Bucket(vmBucketName(name))
	data := b.Bucket(bucketData)
	c := b.Bucket(bucketMeta).Cursor()
	var buf []byte
	for k, v := c.Seek(seqKey(from + 1)); k != nil && keySeq(k) <= upTo; k, v = c.Next() {
		r, err := decodeMeta(name, keySeq(k), v)
		if err != nil {
			return st, err
		}
		if fn != nil {
			fn(&r)
		}
		if r.Kind != KindWrite {
			continue
		}
		if st.Writes%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return st, err
			}
		}
		payload := data.Get(k)
		if payload == nil && r.Codec != CodecZero {
			return st, &CorruptError{VM: name, Seq: r.Seq, Disk: r.Disk, Offset: r.Offset, Err: fmt.Errorf("%w: payload missing", ErrChecksum)}
		}
		out, err := decode(buf, r.Codec, payload, r.Length, r.Sum)
		if err != nil {
			return st, &CorruptError{VM: name, Seq: r.Seq, Disk: r.Disk, Offset: r.Offset, Err: err}
		}
		if r.Codec != CodecRaw {
			buf = out
		}
		st.Writes++
		st.Bytes += int64(r.Length)
	}
	return st, nil
}

// ChunkHashes returns the xxhash64 of every chunkSize bytes of one disk as
// of its newest durable record (the last chunk may be shorter), and that
// record's sequence. The disk is assembled in memory a window of chunks at a
// time, so memory stays bounded by the window whatever the disk's size.
func (j *Journal) ChunkHashes(ctx context.Context, name VMID, disk int, chunkSize int64) ([]uint64, Seq, error) {
	if chunkSize <= 0 || chunkSize%blockdev.BlockSize != 0 {
		return nil, 0, fmt.Errorf("chunk hashes: %w: chunk size %d is not a multiple of %d", ErrInvalid, chunkSize, blockdev.BlockSize)
	}
	var sums []uint64
	var seq Seq
	err := j.db.View(func(tx *bolt.Tx) error {
		vm, err := getVM(tx, name)
		if err != nil {
			return err
		}
		if disk < 0 || disk >= len(vm.Disks) {
			return fmt.Errorf("vm %s: %w: index %d", name, ErrNoDisk, disk)
		}
		seq = vm.LastSeq
		size := vm.Disks[disk].Size
		nchunks := (size + chunkSize - 1) / chunkSize
		sums = make([]uint64, nchunks)
		// Chunks no write touched are zeros: they hash without being read.
		touched := newCoverage(nchunks)
		c := tx.Bucket(vmBucketName(name)).Bucket(bucketMeta).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			r, err := decodeMeta(vm.Name, keySeq(k), v)
			if err != nil {
				return err
			}
			if r.Kind != KindWrite || r.Disk != disk {
				continue
			}
			for c := r.Offset / chunkSize; c <= (r.Offset+int64(r.Length)-1)/chunkSize; c++ {
				if !touched.covered(c) {
					touched.set(c)
				}
			}
		}
		zeroFull, zeroTail := ZeroSum(int(chunkSize)), ZeroSum(int(size-(nchunks-1)*chunkSize))
		for c := range sums {
			sums[c] = zeroFull
		}
		sums[nchunks-1] = zeroTail
		// Assemble touched chunks a window at a time.
		const window = 256 << 20
		perWin := max(1, window/chunkSize)
		buf := make([]byte, perWin*chunkSize)
		for w := int64(0); w < nchunks; w += perWin {
			any := false
			for c := w; c < min(w+perWin, nchunks); c++ {
				if touched.covered(c) {
					any = true
					break
				}
			}
			if !any {
				continue
			}
			lo, hi := w*chunkSize, min((w+perWin)*chunkSize, size)
			clear(buf)
			if err := readRange(ctx, tx, vm, seq, disk, lo, hi, buf); err != nil {
				return err
			}
			for c := w; c < min(w+perWin, nchunks); c++ {
				if touched.covered(c) {
					off := c*chunkSize - lo
					end := min(off+chunkSize, hi-lo)
					sums[c] = xxhash.Sum64(buf[off:end])
				}
			}
		}
		return nil
	})
	return sums, seq, err
}

// readRange assembles [lo, hi) of a disk as of upTo into buf.
func readRange(ctx context.Context, tx *bolt.Tx, vm *VM, upTo Seq, disk int, lo, hi int64, buf []byte) error {
	return readPoint(ctx, tx, vm, upTo, disk, lo, hi, func(e Extent) error {
		if e.Data != nil {
			copy(buf[e.Offset-lo:], e.Data)
		}
		return nil
	})
}
