package journal

import (
	"context"
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
)

// The hash index: while a VM's HashIndex is set, bucketHashes under its
// bucket holds the xxhash64 of every block of its disks as of its last
// record, kept up to date in the transaction that appends each write, so
// that a resync reads block sums instead of decoding the journal. A key is
// a disk and an index chunk (16 blocks); its value is the 16 sums. Blocks
// of a chunk no write covered hold zeros, and so do chunks without a key.
//
// The index is only as good as that rule: a VM whose disks start from
// something other than zeros (a base attached with AttachBase) or a write that
// comes without its block sums loses its index for good, and hashes are
// then computed from the data as before.
var bucketHashes = []byte("hashes")

const (
	indexBlocks = 16
	indexChunk  = indexBlocks * blockdev.BlockSize
)

var zeroBlockSum = ferry.ZeroSum(blockdev.BlockSize)

func indexKey(disk int, chunk int64) []byte {
	k := binary.BigEndian.AppendUint16(make([]byte, 0, 10), uint16(disk))
	return binary.BigEndian.AppendUint64(k, uint64(chunk))
}

// indexable reports whether a VM's disks can have an index: every disk a
// whole number of blocks.
func indexable(vm *VM) bool {
	for _, d := range vm.Disks {
		if d.Size%blockdev.BlockSize != 0 {
			return false
		}
	}
	return true
}

// indexWrite records a write's block sums in the VM's index, or drops the
// index when the write has none.
func indexWrite(tx *bolt.Tx, vm *VM, r *Record) error {
	if !vm.HashIndex {
		return nil
	}
	nblocks := r.Length / blockdev.BlockSize
	if r.Codec != CodecZero && len(r.BlockSums) != nblocks {
		return dropIndex(tx, vm)
	}
	idx, err := tx.Bucket(vmBucketName(vm.Name)).CreateBucketIfNotExists(bucketHashes)
	if err != nil {
		return err
	}
	first := r.Offset / blockdev.BlockSize
	for b := int64(0); b < int64(nblocks); {
		blk := first + b
		chunk := blk / indexBlocks
		key := indexKey(r.Disk, chunk)
		val := make([]byte, 8*indexBlocks)
		if old := idx.Get(key); len(old) == len(val) {
			copy(val, old)
		} else {
			for i := range indexBlocks {
				binary.LittleEndian.PutUint64(val[8*i:], zeroBlockSum)
			}
		}
		for ; b < int64(nblocks) && (first+b)/indexBlocks == chunk; b++ {
			sum := zeroBlockSum
			if r.Codec != CodecZero {
				sum = r.BlockSums[b]
			}
			binary.LittleEndian.PutUint64(val[8*((first+b)%indexBlocks):], sum)
		}
		if err := idx.Put(key, val); err != nil {
			return err
		}
	}
	return nil
}

// dropIndex clears a VM's index for good (the caller stores the VM).
func dropIndex(tx *bolt.Tx, vm *VM) error {
	vm.HashIndex = false
	b := tx.Bucket(vmBucketName(vm.Name))
	if b.Bucket(bucketHashes) != nil {
		return b.DeleteBucket(bucketHashes)
	}
	return nil
}

// AttachFolded attaches devs as AttachBase does, for bases retention made
// by folding the VM's own records into zeroed devices (Trim): every block
// in them that is not zero was written by a record the hash index saw, so
// the index stays.
func (j *Journal) AttachFolded(ctx context.Context, name ferry.VMID, devs []blockdev.Device) error {
	return j.attach(ctx, name, devs)
}

// indexSums calls fn with the block sums of every index chunk of a disk
// in order, all zero sums where the index has no key; false when the VM
// has no index.
func indexSums(ctx context.Context, tx *bolt.Tx, vm *VM, disk int, fn func(chunk int64, sums []uint64) error) (bool, error) {
	if !vm.HashIndex || disk < 0 || disk >= len(vm.Disks) {
		return false, nil
	}
	nchunks := (vm.Disks[disk].Size + indexChunk - 1) / indexChunk
	lastBlocks := int((vm.Disks[disk].Size/blockdev.BlockSize-1)%indexBlocks + 1)
	var c *bolt.Cursor
	if idx := tx.Bucket(vmBucketName(vm.Name)).Bucket(bucketHashes); idx != nil {
		c = idx.Cursor()
	}
	var k, v []byte
	if c != nil {
		k, v = c.Seek(indexKey(disk, 0))
	}
	sums := make([]uint64, indexBlocks)
	for chunk := int64(0); chunk < nchunks; chunk++ {
		if chunk%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return true, err
			}
		}
		for k != nil && int(binary.BigEndian.Uint16(k)) == disk && int64(binary.BigEndian.Uint64(k[2:])) < chunk {
			k, v = c.Next()
		}
		if k != nil && int(binary.BigEndian.Uint16(k)) == disk && int64(binary.BigEndian.Uint64(k[2:])) == chunk {
			if len(v) != 8*indexBlocks {
				return true, fmt.Errorf("vm %s disk %d: %w: hash index entry of chunk %d is %d bytes", vm.Name, disk, ErrChecksum, chunk, len(v))
			}
			for i := range sums {
				sums[i] = binary.LittleEndian.Uint64(v[8*i:])
			}
		} else {
			for i := range sums {
				sums[i] = zeroBlockSum
			}
		}
		n := indexBlocks
		if chunk == nchunks-1 {
			n = lastBlocks
		}
		if err := fn(chunk, sums[:n]); err != nil {
			return true, err
		}
	}
	return true, nil
}

// EachFoldedHash calls fn, a window at a time in disk order, with the hash
// of every chunk of chunkSize of one disk, each the fold of its blocks'
// sums (ferry.FoldSums), first being the window's first chunk and seq the
// record they reflect. A VM with a hash index is answered from it without
// reading the replica; one without is read as EachChunkHash reads it.
func (j *Journal) EachFoldedHash(ctx context.Context, name ferry.VMID, disk int, chunkSize int64, fn func(seq ferry.Seq, first int64, sums []uint64) error) (ferry.Seq, error) {
	if chunkSize <= 0 || chunkSize%blockdev.BlockSize != 0 {
		return 0, fmt.Errorf("chunk hashes: %w: chunk size %d is not a multiple of %d", ErrInvalid, chunkSize, blockdev.BlockSize)
	}
	per := int(chunkSize / blockdev.BlockSize)
	const window = 32 << 10 // chunk hashes per call
	var out []uint64
	var blocks []uint64
	var first int64
	var seq ferry.Seq
	// fold takes block sums in disk order and hands out chunk hashes a
	// window at a time.
	fold := func(sums []uint64, last bool) error {
		blocks = append(blocks, sums...)
		for len(blocks) >= per || (last && len(blocks) > 0) {
			n := min(per, len(blocks))
			out = append(out, ferry.FoldSums(blocks[:n]))
			blocks = blocks[n:]
			if len(out) == window {
				if err := fn(seq, first, out); err != nil {
					return err
				}
				first += int64(len(out))
				out = out[:0]
			}
		}
		return nil
	}
	indexed := false
	err := j.db.View(func(tx *bolt.Tx) error {
		vm, err := getVMDisk(tx, name, disk)
		if err != nil {
			return err
		}
		seq = vm.LastSeq
		indexed, err = indexSums(ctx, tx, vm, disk, func(_ int64, sums []uint64) error { return fold(sums, false) })
		return err
	})
	if err != nil {
		return seq, err
	}
	if !indexed {
		// No index: the block sums of the replica as it is read.
		if seq, err = j.EachChunkHash(ctx, name, disk, blockdev.BlockSize, nil, func(s ferry.Seq, _ int64, sums []uint64) error {
			seq = s
			return fold(sums, false)
		}); err != nil {
			return seq, err
		}
	}
	if err := fold(nil, true); err != nil {
		return seq, err
	}
	if len(out) > 0 {
		return seq, fn(seq, first, out)
	}
	return seq, nil
}

// indexedBlockSums answers a request for the sums of listed blocks from the
// VM's index; false when it has none.
func indexedBlockSums(tx *bolt.Tx, vm *VM, disk int, only []uint64) ([]uint64, bool, error) {
	if !vm.HashIndex || disk < 0 || disk >= len(vm.Disks) {
		return nil, false, nil
	}
	nblocks := uint64(vm.Disks[disk].Size / blockdev.BlockSize)
	idx := tx.Bucket(vmBucketName(vm.Name)).Bucket(bucketHashes)
	sums := make([]uint64, len(only))
	for i, b := range only {
		if b >= nblocks {
			return nil, true, fmt.Errorf("vm %s: %w: block %d of a disk of %d blocks", vm.Name, ErrInvalid, b, nblocks)
		}
		sums[i] = zeroBlockSum
		if idx == nil {
			continue
		}
		if v := idx.Get(indexKey(disk, int64(b/indexBlocks))); v != nil {
			if len(v) != 8*indexBlocks {
				return nil, true, fmt.Errorf("vm %s disk %d: %w: hash index entry of block %d is %d bytes", vm.Name, disk, ErrChecksum, b, len(v))
			}
			sums[i] = binary.LittleEndian.Uint64(v[8*(b%indexBlocks):])
		}
	}
	return sums, true, nil
}
