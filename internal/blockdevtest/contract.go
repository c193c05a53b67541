// Package blockdevtest is the contract every blockdev.Device keeps, as one
// suite that each implementation's tests run (the memory and file disks,
// the write splitter, the journal's overlay, the process server's quota
// wrapper, the fault harness's disk).
package blockdevtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/ferrydr/ferry/pkg/blockdev"
)

// Options say what an implementation does beyond the contract's core.
type Options struct {
	// Aligned: the device takes only whole, aligned blocks (the write
	// splitter); an unaligned write must fail and change nothing.
	Aligned bool
}

// Size is the size of the devices Run asks for.
const Size = 1 << 20

// Run checks the Device contract against fresh, all-zero devices of Size
// bytes that open returns (one per subtest).
func Run(t *testing.T, opt Options, open func(t *testing.T) blockdev.Device) {
	ctx := context.Background()
	t.Run("size and zeros", func(t *testing.T) {
		d := open(t)
		if d.Size() != Size {
			t.Fatalf("size %d, want %d", d.Size(), Size)
		}
		buf := make([]byte, 3*blockdev.BlockSize)
		if _, err := d.ReadAt(ctx, buf, 5*blockdev.BlockSize); err != nil || !blockdev.IsZero(buf) {
			t.Fatalf("a new device does not read zeros: %v", err)
		}
	})
	t.Run("read back", func(t *testing.T) {
		d := open(t)
		data := pattern(37*blockdev.BlockSize, 1) // crosses pages and extents
		off := int64(16 * blockdev.BlockSize)
		if _, err := d.WriteAt(ctx, data, off); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(data)+2*blockdev.BlockSize)
		if _, err := d.ReadAt(ctx, got, off-blockdev.BlockSize); err != nil {
			t.Fatal(err)
		}
		want := append(append(make([]byte, blockdev.BlockSize), data...), make([]byte, blockdev.BlockSize)...)
		if !bytes.Equal(got, want) {
			t.Fatal("what was written does not read back, or its neighbours changed")
		}
		// The last block of the device.
		last := pattern(blockdev.BlockSize, 2)
		if _, err := d.WriteAt(ctx, last, Size-blockdev.BlockSize); err != nil {
			t.Fatal(err)
		}
		if _, err := d.ReadAt(ctx, got[:blockdev.BlockSize], Size-blockdev.BlockSize); err != nil || !bytes.Equal(got[:blockdev.BlockSize], last) {
			t.Fatalf("the last block does not read back: %v", err)
		}
		if err := d.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if ex, ok := d.(blockdev.Extents); ok {
			covered := int64(0)
			err := ex.DataExtents(ctx, func(o, n int64) error {
				covered += max(0, min(o+n, off+int64(len(data)))-max(o, off))
				return nil
			})
			if err != nil || covered != int64(len(data)) {
				t.Fatalf("extents cover %d of %d written bytes: %v", covered, len(data), err)
			}
		}
	})
	t.Run("unaligned", func(t *testing.T) {
		d := open(t)
		_, err := d.WriteAt(ctx, []byte("unaligned"), blockdev.BlockSize+100)
		got := make([]byte, blockdev.BlockSize)
		d.ReadAt(ctx, got, blockdev.BlockSize)
		switch {
		case opt.Aligned && err == nil:
			t.Fatal("an unaligned write was taken")
		case opt.Aligned && !blockdev.IsZero(got):
			t.Fatal("a refused unaligned write changed the device")
		case !opt.Aligned && err != nil:
			t.Fatal(err)
		case !opt.Aligned && (string(got[100:109]) != "unaligned" || !blockdev.IsZero(got[:100]) || !blockdev.IsZero(got[109:])):
			t.Fatal("an unaligned write does not read back in place")
		}
	})
	t.Run("out of range", func(t *testing.T) {
		d := open(t)
		blk := make([]byte, blockdev.BlockSize)
		for _, off := range []int64{Size, Size + blockdev.BlockSize, -blockdev.BlockSize} {
			if _, err := d.WriteAt(ctx, blk, off); !errors.Is(err, blockdev.ErrOutOfRange) {
				t.Errorf("write at %d: %v, want %v", off, err, blockdev.ErrOutOfRange)
			}
			if _, err := d.ReadAt(ctx, blk, off); !errors.Is(err, blockdev.ErrOutOfRange) {
				t.Errorf("read at %d: %v, want %v", off, err, blockdev.ErrOutOfRange)
			}
		}
		if _, err := d.ReadAt(ctx, make([]byte, 2*blockdev.BlockSize), Size-blockdev.BlockSize); !errors.Is(err, blockdev.ErrOutOfRange) {
			t.Errorf("read across the end: %v", err)
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		d := open(t)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 16 {
					off := int64(w*16+i) * blockdev.BlockSize * 2
					if _, err := d.WriteAt(ctx, pattern(blockdev.BlockSize, byte(w*16+i)), off); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		got := make([]byte, blockdev.BlockSize)
		for k := range 128 {
			if _, err := d.ReadAt(ctx, got, int64(k)*blockdev.BlockSize*2); err != nil || !bytes.Equal(got, pattern(blockdev.BlockSize, byte(k))) {
				t.Fatalf("block %d of concurrent writers: %v", k*2, err)
			}
		}
	})
}

// pattern is n bytes that differ from block to block and from seed to seed.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i/blockdev.BlockSize) ^ seed ^ "ferry"[i%5]
	}
	if blockdev.IsZero(b) {
		panic(fmt.Sprint("zero pattern ", seed))
	}
	return b
}
