package cbt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"

	"github.com/cespare/xxhash/v2"
)

// Bitmap marks dirty blocks of one disk: blocks whose current content must
// be read and sent because the ordered record of their writes was lost. It
// is not safe for concurrent use; Tracker guards it.
type Bitmap struct {
	blockSize int64
	nblocks   int64
	words     []uint64
	count     int64 // set bits
	cursor    int64 // next block TakeRun looks at
}

// NewBitmap returns an empty bitmap for a disk of size bytes.
func NewBitmap(size, blockSize int64) *Bitmap {
	n := (size + blockSize - 1) / blockSize
	return &Bitmap{blockSize: blockSize, nblocks: n, words: make([]uint64, (n+63)/64)}
}

// Count is the number of dirty blocks.
func (b *Bitmap) Count() int64 { return b.count }

// Blocks is the number of blocks the bitmap covers.
func (b *Bitmap) Blocks() int64 { return b.nblocks }

// SetRange marks every block that [off, off+length) touches.
func (b *Bitmap) SetRange(off, length int64) {
	if length <= 0 {
		return
	}
	first := off / b.blockSize
	last := min((off+length-1)/b.blockSize, b.nblocks-1)
	for i := first; i <= last; i++ {
		w, m := i/64, uint64(1)<<(i%64)
		if b.words[w]&m == 0 {
			b.words[w] |= m
			b.count++
		}
	}
}

// SetAll marks every block.
func (b *Bitmap) SetAll() { b.SetRange(0, b.nblocks*b.blockSize) }

// IsSet reports whether block i is dirty.
func (b *Bitmap) IsSet(i int64) bool { return b.words[i/64]&(1<<(i%64)) != 0 }

// TakeRun finds the next run of dirty blocks at or after the cursor
// (wrapping around), clears at most max of them and returns the first
// block and the run's length. It returns n == 0 when nothing is dirty.
func (b *Bitmap) TakeRun(max int64) (first, n int64) {
	if b.count == 0 || max <= 0 {
		return 0, 0
	}
	start, ok := b.next(b.cursor)
	if !ok {
		if start, ok = b.next(0); !ok {
			return 0, 0
		}
	}
	i := start
	for i < b.nblocks && n < max && b.IsSet(i) {
		b.words[i/64] &^= 1 << (i % 64)
		b.count--
		i++
		n++
	}
	b.cursor = i
	return start, n
}

// next returns the first dirty block at or after i.
func (b *Bitmap) next(i int64) (int64, bool) {
	for i < b.nblocks {
		w := b.words[i/64] >> (i % 64)
		if w != 0 {
			j := i + int64(bits.TrailingZeros64(w))
			return j, j < b.nblocks
		}
		i = (i/64 + 1) * 64
	}
	return 0, false
}

// Merge marks dirty every block that is dirty in o, a bitmap of the same
// geometry.
func (b *Bitmap) Merge(o *Bitmap) {
	for i, w := range o.words {
		b.count += int64(bits.OnesCount64(w &^ b.words[i]))
		b.words[i] |= w
	}
}

// Clear marks every block clean.
func (b *Bitmap) Clear() {
	clear(b.words)
	b.count, b.cursor = 0, 0
}

const bitmapMagic = "FERRYBM1"

// ErrCorruptBitmap is returned when a persisted bitmap fails its checks.
var ErrCorruptBitmap = errors.New("persisted bitmap is corrupt")

// Save writes the bitmap to path atomically (temporary file, fsync, rename).
func (b *Bitmap) Save(path string) error {
	buf := make([]byte, 0, 8+16+len(b.words)*8+8)
	buf = append(buf, bitmapMagic...)
	buf = binary.BigEndian.AppendUint64(buf, uint64(b.blockSize))
	buf = binary.BigEndian.AppendUint64(buf, uint64(b.nblocks))
	for _, w := range b.words {
		buf = binary.BigEndian.AppendUint64(buf, w)
	}
	buf = binary.BigEndian.AppendUint64(buf, xxhash.Sum64(buf))
	return WriteFileAtomic(path, buf)
}

// LoadBitmap reads a bitmap saved by Save for a disk of size bytes.
func LoadBitmap(path string, size, blockSize int64) (*Bitmap, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b := NewBitmap(size, blockSize)
	want := 8 + 16 + len(b.words)*8 + 8
	if len(raw) != want || string(raw[:8]) != bitmapMagic {
		return nil, fmt.Errorf("load bitmap %s: %w: size %d, want %d", path, ErrCorruptBitmap, len(raw), want)
	}
	body, sum := raw[:len(raw)-8], binary.BigEndian.Uint64(raw[len(raw)-8:])
	if xxhash.Sum64(body) != sum {
		return nil, fmt.Errorf("load bitmap %s: %w: checksum mismatch", path, ErrCorruptBitmap)
	}
	if int64(binary.BigEndian.Uint64(raw[8:])) != blockSize || int64(binary.BigEndian.Uint64(raw[16:])) != b.nblocks {
		return nil, fmt.Errorf("load bitmap %s: %w: saved for another disk geometry", path, ErrCorruptBitmap)
	}
	for i := range b.words {
		b.words[i] = binary.BigEndian.Uint64(raw[24+i*8:])
		b.count += int64(bits.OnesCount64(b.words[i]))
	}
	return b, nil
}

// WriteFileAtomic replaces path with data: it writes a temporary file beside
// it, syncs it, renames it over path and syncs the directory.
func WriteFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path))
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
