package journal

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/ferrydr/ferry"
	"github.com/ferrydr/ferry/pkg/blockdev"
)

// coverage tracks which blocks of a disk a newer write already supplies.
// It is sparse (one 512-byte page per 4096 blocks that hold a covered
// one): its memory follows what was written, not the disk's declared size.
type coverage struct {
	pages map[int64]*[64]uint64
	n     int64
	left  int64
	// The page last looked at: runs of blocks stay on one page.
	lastIdx  int64
	lastPage *[64]uint64
}

func newCoverage(nblocks int64) *coverage {
	return &coverage{pages: map[int64]*[64]uint64{}, n: nblocks, left: nblocks, lastIdx: -1}
}

func (c *coverage) page(i int64, create bool) *[64]uint64 {
	idx := i >> 12
	if idx == c.lastIdx && c.lastPage != nil {
		return c.lastPage
	}
	p := c.pages[idx]
	if p == nil && create {
		p = new([64]uint64)
		c.pages[idx] = p
	}
	if p != nil {
		c.lastIdx, c.lastPage = idx, p
	}
	return p
}

func (c *coverage) covered(i int64) bool {
	p := c.page(i, false)
	return p != nil && p[(i>>6)&63]&(1<<(i&63)) != 0
}

func (c *coverage) set(i int64) {
	p := c.page(i, true)
	p[(i>>6)&63] |= 1 << (i & 63)
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
func (j *Journal) ReadPoint(ctx context.Context, name ferry.VMID, upTo ferry.Seq, disk int, fn func(Extent) error) error {
	return j.db.View(func(tx *bolt.Tx) error {
		vm, err := getVMDisk(tx, name, disk)
		if err != nil {
			return err
		}
		if upTo > vm.LastSeq {
			return fmt.Errorf("vm %s: read up to %d: %w: last durable record is %d", name, upTo, ErrNoPoint, vm.LastSeq)
		}
		return readPoint(ctx, tx, vm, upTo, disk, 0, vm.Disks[disk].Size, j.Base(name), j.payloads(), fn)
	})
}

// readPoint reads [lo, hi) of a disk as of upTo; see ReadPoint. Blocks no
// write supplied come from base when the VM has one, after everything else.
func readPoint(ctx context.Context, tx *bolt.Tx, vm *VM, upTo ferry.Seq, disk int, lo, hi int64, base []blockdev.Device, src payloads, fn func(Extent) error) error {
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
		// The checksum comes first: a flipped kind or disk must not make
		// the read skip a write it needs.
		r, err := decodeMeta(vm.Name, keySeq(k), v)
		if err != nil {
			return err
		}
		if r.Kind != KindWrite || r.Disk != disk {
			continue
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
				payload, err := src.get(ctx, data, vm.ColdSeq, &r, k)
				if err != nil {
					return &CorruptError{VM: vm.Name, Seq: r.Seq, Disk: disk, Offset: r.Offset, Err: err}
				}
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
	if base == nil || cov.left == 0 {
		return nil
	}
	var bbuf []byte
	return cov.take(loBlk, hiBlk-loBlk, func(first, n int64) error {
		for off, end := first*bs, min((first+n)*bs, size); off < end; {
			c := min(end-off, 1<<20)
			if int64(cap(bbuf)) < c {
				bbuf = make([]byte, c)
			}
			if _, err := base[disk].ReadAt(ctx, bbuf[:c], off); err != nil {
				return fmt.Errorf("vm %s: read base of disk %d at %d: %w", vm.Name, disk, off, err)
			}
			if err := checkBase(tx, vm, disk, off, bbuf[:c]); err != nil {
				return err
			}
			// Zero blocks of the base are not reported, as blocks no
			// write supplied are not.
			for i := int64(0); i < c; {
				for i < c && blockdev.IsZero(bbuf[i:min(i+bs, c)]) {
					i += bs
				}
				k := i
				for k < c && !blockdev.IsZero(bbuf[k:min(k+bs, c)]) {
					k += bs
				}
				if k > i {
					if err := fn(Extent{Offset: off + i, Length: min(k, c) - i, Data: bbuf[i:min(k, c)]}); err != nil {
						return err
					}
				}
				i = k
			}
			off += c
		}
		return nil
	})
}

// Materialize writes one disk as of the state after record upTo into dst,
// which must be the disk's size. When dstZeroed is set dst already reads as
// zeros (a new sparse file) and zero ranges are skipped; otherwise they are
// written.
func (j *Journal) Materialize(ctx context.Context, name ferry.VMID, upTo ferry.Seq, disk int, dst blockdev.Device, dstZeroed bool) error {
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
	// Decoding the journal and writing the target overlap: the reader
	// copies extents into batches that one writer goroutine writes.
	w := newBatchWriter(ctx, dst)
	err = j.ReadPoint(ctx, name, upTo, disk, func(e Extent) error {
		if written != nil {
			written.take(e.Offset/bs, (e.Length+bs-1)/bs, func(int64, int64) error { return nil })
		}
		if e.Data == nil {
			if dstZeroed {
				return nil
			}
			// Extents never overlap: the order of writes does not matter.
			return writeZeros(e.Offset, e.Length)
		}
		return w.add(e.Data, e.Offset)
	})
	if werr := w.close(); err == nil {
		err = werr
	}
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
func (j *Journal) Verify(ctx context.Context, name ferry.VMID, upTo ferry.Seq) (VerifyStats, error) {
	var st VerifyStats
	err := j.db.View(func(tx *bolt.Tx) (err error) {
		vm, err := getVM(tx, name)
		if err != nil {
			return err
		}
		st, err = verifyRecords(ctx, tx, vm, 0, upTo, j.payloads(), nil)
		return err
	})
	return st, err
}

// verifyRecords walks the records after from up to upTo, reads back every
// write's payload and checks it against its xxhash, and calls fn (if set)
// with each record.
func verifyRecords(ctx context.Context, tx *bolt.Tx, vm *VM, from, upTo ferry.Seq, src payloads, fn func(*Record)) (VerifyStats, error) {
	var st VerifyStats
	name := vm.Name
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
		var payload []byte
		if r.Codec != CodecZero {
			if payload, err = src.get(ctx, data, vm.ColdSeq, &r, k); err != nil {
				return st, &CorruptError{VM: name, Seq: r.Seq, Disk: r.Disk, Offset: r.Offset, Err: err}
			}
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

// zeroChunks returns the hash of chunk c of a disk of size bytes when it
// holds only zeros: every chunk's but a short last one's is the same.
func zeroChunks(size, chunkSize int64) func(c int64) uint64 {
	nchunks := (size + chunkSize - 1) / chunkSize
	full, last := ferry.ZeroSum(int(min(chunkSize, size))), ferry.ZeroSum(int(size-(nchunks-1)*chunkSize))
	return func(c int64) uint64 {
		if c == nchunks-1 {
			return last
		}
		return full
	}
}

// zeroBlocks returns the block hashes of an all-zero disk of size bytes.
func zeroBlocks(size int64) []uint64 {
	sums := make([]uint64, size/blockdev.BlockSize)
	zb := ferry.ZeroSum(blockdev.BlockSize)
	for i := range sums {
		sums[i] = zb
	}
	return sums
}

// touchedChunks marks the chunks of disk that a write of vm's journal
// covers: without a base, the others read as zeros.
func touchedChunks(tx *bolt.Tx, vm *VM, disk int, chunkSize, nchunks int64) (*coverage, error) {
	touched := newCoverage(nchunks)
	cur := tx.Bucket(vmBucketName(vm.Name)).Bucket(bucketMeta).Cursor()
	for k, v := cur.First(); k != nil; k, v = cur.Next() {
		r, err := decodeMeta(vm.Name, keySeq(k), v)
		if err != nil {
			return nil, err
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
	return touched, nil
}

// hashRead hashes the chunks listed of buf (the disk's bytes from lo on),
// giving each to got; with blockSums (indexed by block of the disk) it
// keeps their blocks' hashes too.
func hashRead(buf []byte, lo, chunkSize int64, chunks []int64, got func(c int64, h uint64), blockSums []uint64) {
	for _, c := range chunks {
		off := c*chunkSize - lo
		end := min(off+chunkSize, int64(len(buf)))
		got(c, xxhash.Sum64(buf[off:end]))
		if blockSums != nil {
			for b := off; b < end; b += blockdev.BlockSize {
				blockSums[(lo+b)/blockdev.BlockSize] = xxhash.Sum64(buf[b:min(b+blockdev.BlockSize, end)])
			}
		}
	}
}

// ChunkHashes returns the xxhash64 of chunks of one disk as of its newest
// durable record, and that record's sequence: of every chunk when only is
// nil (the last may be shorter), else of the chunks listed, in that order.
// See EachChunkHash; the answer of every chunk is held whole.
func (j *Journal) ChunkHashes(ctx context.Context, name ferry.VMID, disk int, chunkSize int64, only []uint64) ([]uint64, ferry.Seq, error) {
	var out []uint64
	seq, err := j.EachChunkHash(ctx, name, disk, chunkSize, only, func(_ ferry.Seq, _ int64, sums []uint64) error {
		out = append(out, sums...)
		return nil
	})
	return out, seq, err
}

// EachChunkHash hashes chunks as ChunkHashes does and hands them to fn: of
// every chunk (only nil) a window at a time in disk order, first being
// the window's first chunk, seq the record they reflect; of the chunks listed, once, in the order
// asked. The disk is assembled in memory a window at a time and what
// tracks the chunks to read is sparse, so memory follows what is stored
// and asked for, not the disk's declared size; chunks no write touched
// and that have no base hash as zeros without being read.
func (j *Journal) EachChunkHash(ctx context.Context, name ferry.VMID, disk int, chunkSize int64, only []uint64, fn func(seq ferry.Seq, first int64, sums []uint64) error) (ferry.Seq, error) {
	if chunkSize <= 0 || chunkSize%blockdev.BlockSize != 0 {
		return 0, fmt.Errorf("chunk hashes: %w: chunk size %d is not a multiple of %d", ErrInvalid, chunkSize, blockdev.BlockSize)
	}
	// A resync asks for chunk hashes, then for the block hashes of the
	// chunks that differ: the first pass keeps the block hashes so that
	// the second needs no second read of the journal.
	if chunkSize == blockdev.BlockSize && only != nil {
		if sums, seq, ok := j.cachedBlockHashes(ctx, name, disk, only); ok {
			return seq, fn(seq, 0, sums)
		}
		// A VM with a hash index answers listed blocks from it.
		var sums []uint64
		var seq ferry.Seq
		indexed := false
		err := j.db.View(func(tx *bolt.Tx) error {
			vm, err := getVM(tx, name)
			if err != nil {
				return err
			}
			seq = vm.LastSeq
			sums, indexed, err = indexedBlockSums(tx, vm, disk, only)
			return err
		})
		if err != nil {
			return seq, err
		}
		if indexed {
			return seq, fn(seq, 0, sums)
		}
	}
	all := only == nil
	var blockSums []uint64
	base := j.Base(name)
	var seq ferry.Seq
	err := j.db.View(func(tx *bolt.Tx) error {
		vm, err := getVMDisk(tx, name, disk)
		if err != nil {
			return err
		}
		seq = vm.LastSeq
		size := vm.Disks[disk].Size
		nchunks := (size + chunkSize - 1) / chunkSize
		wanted := map[int64][]int{} // chunk -> positions in the answer
		for i, c := range only {
			if int64(c) >= nchunks {
				return fmt.Errorf("vm %s: %w: chunk %d of a disk of %d chunks", name, ErrInvalid, c, nchunks)
			}
			wanted[int64(c)] = append(wanted[int64(c)], i)
		}
		var sums []uint64
		if !all {
			sums = make([]uint64, len(only))
		}
		zero := zeroChunks(size, chunkSize)
		if all && chunkSize > blockdev.BlockSize && size/blockdev.BlockSize*8 <= maxBlockHashCache {
			blockSums = zeroBlocks(size)
		}
		// Chunks that need reading: all with a base, else those touched
		// by a write.
		var touched *coverage
		if base == nil {
			if touched, err = touchedChunks(tx, vm, disk, chunkSize, nchunks); err != nil {
				return err
			}
		}
		read := func(c int64) bool { return base != nil || touched.covered(c) }
		const window = 64 << 20
		perWin := max(1, window/chunkSize)
		var buf []byte
		var win []uint64
		for w := int64(0); w < nchunks; w += perWin {
			wend := min(w+perWin, nchunks)
			var toRead []int64
			if all {
				win = win[:0]
				for c := w; c < wend; c++ {
					win = append(win, zero(c))
					if read(c) {
						toRead = append(toRead, c)
					}
				}
			} else {
				for c := w; c < wend; c++ {
					pos, ok := wanted[c]
					if !ok {
						continue
					}
					if !read(c) {
						for _, i := range pos {
							sums[i] = zero(c)
						}
						continue
					}
					toRead = append(toRead, c)
				}
			}
			if len(toRead) > 0 {
				lo, hi := w*chunkSize, min(wend*chunkSize, size)
				if buf == nil {
					buf = make([]byte, perWin*chunkSize)
				}
				clear(buf)
				if err := readRange(ctx, tx, vm, seq, disk, lo, hi, base, j.payloads(), buf); err != nil {
					return err
				}
				hashRead(buf[:hi-lo], lo, chunkSize, toRead, func(c int64, h uint64) {
					if all {
						win[c-w] = h
					}
					for _, i := range wanted[c] {
						sums[i] = h
					}
				}, blockSums)
			}
			if all {
				if err := fn(seq, w, win); err != nil {
					return err
				}
			}
		}
		if !all {
			return fn(seq, 0, sums)
		}
		return nil
	})
	if err == nil && blockSums != nil {
		j.cacheBlockHashes(name, disk, seq, blockSums)
	}
	return seq, err
}

// maxBlockHashCache bounds the block hashes kept between the two levels
// of a resync (8 bytes per 4 KiB block: 64 MiB covers a 32 GiB disk).
const maxBlockHashCache = 64 << 20

type blockHashCache struct {
	vm   ferry.VMID
	disk int
	seq  ferry.Seq
	sums []uint64
}

func (j *Journal) cacheBlockHashes(vm ferry.VMID, disk int, seq ferry.Seq, sums []uint64) {
	j.hashMu.Lock()
	j.hashCache = &blockHashCache{vm: vm, disk: disk, seq: seq, sums: sums}
	j.hashMu.Unlock()
}

// cachedBlockHashes answers a request for block hashes from the last
// full pass, if it was of this disk and nothing was appended since.
func (j *Journal) cachedBlockHashes(ctx context.Context, vm ferry.VMID, disk int, only []uint64) ([]uint64, ferry.Seq, bool) {
	j.hashMu.Lock()
	c := j.hashCache
	j.hashMu.Unlock()
	if c == nil || c.vm != vm || c.disk != disk {
		return nil, 0, false
	}
	// Records after the pass (a drain opening, markers) keep the hashes
	// valid as long as none of them writes this disk.
	var last ferry.Seq
	err := j.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(vmBucketName(vm))
		if b == nil {
			return ErrNoVM
		}
		cur := b.Bucket(bucketMeta).Cursor()
		for k, v := cur.Seek(seqKey(c.seq + 1)); k != nil; k, v = cur.Next() {
			r, err := decodeMeta(vm, keySeq(k), v)
			if err != nil || (r.Kind == KindWrite && r.Disk == disk) {
				return errStop // unreadable metadata: hash afresh, which reports it
			}
			last = keySeq(k)
		}
		return nil
	})
	if err != nil {
		return nil, 0, false
	}
	if last < c.seq {
		last = c.seq
	}
	out := make([]uint64, len(only))
	for i, b := range only {
		if b >= uint64(len(c.sums)) {
			return nil, 0, false
		}
		out[i] = c.sums[b]
	}
	return out, last, true
}

// readRange assembles [lo, hi) of a disk as of upTo into buf.
func readRange(ctx context.Context, tx *bolt.Tx, vm *VM, upTo ferry.Seq, disk int, lo, hi int64, base []blockdev.Device, src payloads, buf []byte) error {
	return readPoint(ctx, tx, vm, upTo, disk, lo, hi, base, src, func(e Extent) error {
		if e.Data != nil {
			copy(buf[e.Offset-lo:], e.Data)
		}
		return nil
	})
}

// batchWriter writes extents to a device from its own goroutine: add copies
// an extent into the current batch (a few MiB) and hands full batches
// over, so that the caller goes on decoding while the device writes.
// Extents are written in the order added.
type batchWriter struct {
	cur    *writeBatch
	free   chan *writeBatch
	full   chan *writeBatch
	done   chan error
	failed atomic.Pointer[error]
}

type writeBatch struct {
	buf  []byte
	exts []batchExtent
}

type batchExtent struct {
	off    int64
	lo, hi int // in buf
}

const writeBatchBytes = 4 << 20

func newBatchWriter(ctx context.Context, dst blockdev.Device) *batchWriter {
	w := &batchWriter{free: make(chan *writeBatch, 3), full: make(chan *writeBatch, 2), done: make(chan error, 1)}
	for range 3 {
		w.free <- &writeBatch{buf: make([]byte, 0, writeBatchBytes)}
	}
	go func() {
		var err error
		for b := range w.full {
			for _, e := range b.exts {
				if err == nil {
					if _, err = dst.WriteAt(ctx, b.buf[e.lo:e.hi], e.off); err != nil {
						w.failed.Store(&err)
					}
				}
			}
			b.buf, b.exts = b.buf[:0], b.exts[:0]
			w.free <- b
		}
		w.done <- err
	}()
	w.cur = <-w.free
	return w
}

// add queues a copy of p for writing at off.
func (w *batchWriter) add(p []byte, off int64) error {
	if len(w.cur.buf)+len(p) > writeBatchBytes && len(w.cur.exts) > 0 {
		// (A larger extent gets a batch to itself: append grows it.)
		if err := w.flush(); err != nil {
			return err
		}
	}
	lo := len(w.cur.buf)
	w.cur.buf = append(w.cur.buf, p...)
	w.cur.exts = append(w.cur.exts, batchExtent{off: off, lo: lo, hi: len(w.cur.buf)})
	return nil
}

// flush hands the current batch to the writer; after a failed write it
// returns that error, so that the caller stops reading.
func (w *batchWriter) flush() error {
	if err := w.failed.Load(); err != nil {
		return *err
	}
	w.full <- w.cur
	w.cur = <-w.free
	return nil
}

// close writes what is queued and returns the first write error.
func (w *batchWriter) close() error {
	if len(w.cur.exts) > 0 {
		w.full <- w.cur
	}
	close(w.full)
	return <-w.done
}
