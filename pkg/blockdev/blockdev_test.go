package blockdev_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/ferrydr/ferry/pkg/blockdev"
)

// TestDeviceContract runs the same checks against every Device.
func TestDeviceContract(t *testing.T) {
	const size = 1 << 20
	impls := map[string]func(t *testing.T) blockdev.Device{
		"memory": func(t *testing.T) blockdev.Device { return blockdev.NewMemory(size) },
		"file": func(t *testing.T) blockdev.Device {
			f, err := blockdev.CreateFile(filepath.Join(t.TempDir(), "d.img"), size)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			return f
		},
	}
	for name, open := range impls {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			d := open(t)
			if d.Size() != size {
				t.Fatalf("size %d", d.Size())
			}
			buf := make([]byte, 100)
			if _, err := d.ReadAt(ctx, buf, 500); err != nil || !blockdev.IsZero(buf) {
				t.Fatalf("new device not zero: %v", err)
			}
			data := bytes.Repeat([]byte("ferry"), 30000) // crosses memory pages
			if _, err := d.WriteAt(ctx, data, 65000); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(data))
			if _, err := d.ReadAt(ctx, got, 65000); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read back differs: %v", err)
			}
			if _, err := d.WriteAt(ctx, []byte{1}, size); !errors.Is(err, blockdev.ErrOutOfRange) {
				t.Fatalf("write past the end: %v", err)
			}
			if _, err := d.ReadAt(ctx, make([]byte, 2), size-1); !errors.Is(err, blockdev.ErrOutOfRange) {
				t.Fatalf("read past the end: %v", err)
			}
			if _, err := d.ReadAt(ctx, buf, -1); !errors.Is(err, blockdev.ErrOutOfRange) {
				t.Fatalf("negative offset: %v", err)
			}
			if err := d.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			// Data extents cover every written byte.
			ex, ok := d.(blockdev.Extents)
			if !ok {
				t.Fatal("no extents")
			}
			covered := 0
			ex.DataExtents(ctx, func(off, n int64) error {
				lo, hi := max(off, 65000), min(off+n, 65000+int64(len(data)))
				if hi > lo {
					covered += int(hi - lo)
				}
				return nil
			})
			if covered != len(data) {
				t.Fatalf("extents cover %d of %d written bytes", covered, len(data))
			}
		})
	}
}

func TestMemorySnapshot(t *testing.T) {
	ctx := context.Background()
	m := blockdev.NewMemory(1 << 20)
	m.WriteAt(ctx, bytes.Repeat([]byte{1}, 8192), 0)
	snap := m.Snapshot()
	m.WriteAt(ctx, bytes.Repeat([]byte{2}, 4096), 4096)
	snap.WriteAt(ctx, bytes.Repeat([]byte{3}, 10), 100)
	got := make([]byte, 8192)
	snap.ReadAt(ctx, got, 0)
	want := bytes.Repeat([]byte{1}, 8192)
	copy(want[100:], bytes.Repeat([]byte{3}, 10))
	if !bytes.Equal(got, want) {
		t.Fatal("snapshot saw a later write, or lost its own")
	}
	m.ReadAt(ctx, got, 0)
	want = append(bytes.Repeat([]byte{1}, 4096), bytes.Repeat([]byte{2}, 4096)...)
	if !bytes.Equal(got, want) {
		t.Fatal("original saw the snapshot's write, or lost its own")
	}
}
